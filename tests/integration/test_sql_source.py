"""Reading interactions from SQL tables: a real PostgreSQL database of our own, and a SQLite file."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy

from training.readers import ColumnNames, DataSourceError, read_interactions
from training.validate import ValidationError, to_interactions, validate

LISTENS = pd.DataFrame({
    "listener": ["alice", "alice", "bob", "carol"],
    "track": [10, 11, 10, 12],
    "plays": [3, 1, 2, 5],
    "played_at": pd.to_datetime(["2024-01-01 00:00:00", "2024-01-02 00:00:00",
                                 "2024-01-03 00:00:00", "2024-01-04 00:00:00"]),
})
COLUMNS = ColumnNames(user="listener", item="track", value="plays", time="played_at")
JAN_1 = 1_704_067_200.0


def load(url: str, frame: pd.DataFrame, table: str = "listens", schema: str | None = None) -> None:
    engine = sqlalchemy.create_engine(url)
    try:
        if schema:
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
        frame.to_sql(table, engine, schema=schema, index=False)
    finally:
        engine.dispose()


def check_listens(raw) -> None:
    assert raw.fmt == "sql" and raw.row_offset == 1
    clean = validate(raw).sort_values(["user_id", "item_id"]).reset_index(drop=True)
    assert clean["user_id"].tolist() == ["alice", "alice", "bob", "carol"]
    assert clean["item_id"].tolist() == ["10", "11", "10", "12"]
    assert clean["value"].tolist() == [3.0, 1.0, 2.0, 5.0]
    assert clean["timestamp"].tolist() == [JAN_1 + d * 86_400 for d in range(4)]
    data = to_interactions(raw)
    assert (data.n_users, data.n_items, data.nnz) == (3, 3, 4)


# ---------------------------------------------------------------------------------------------- PostgreSQL
@pytest.mark.postgres
def test_postgres_table(postgres_db):
    load(postgres_db.url, LISTENS)
    raw = read_interactions(postgres_db.url, table="listens", columns=COLUMNS)
    assert raw.source == postgres_db.url  # no password in this URL: shown as is
    check_listens(raw)


@pytest.mark.postgres
def test_postgres_schema_qualified_table_without_values(postgres_db):
    load(postgres_db.url, LISTENS[["listener", "track"]], table="plays", schema="music")
    raw = read_interactions(postgres_db.url, table="music.plays", columns=ColumnNames("listener", "track"))
    assert list(raw.frame.columns) == ["user_id", "item_id", "value"]
    assert raw.frame["value"].tolist() == [1.0] * 4


@pytest.mark.postgres
def test_postgres_bad_row_is_named(postgres_db):
    bad = LISTENS.assign(plays=[3, 1, -2, 5])
    load(postgres_db.url, bad)
    raw = read_interactions(postgres_db.url, table="listens", columns=COLUMNS)
    with pytest.raises(ValidationError, match=r"row 3, column 'plays': -2\.0 is negative"):
        validate(raw)


@pytest.mark.postgres
def test_postgres_missing_table_lists_tables(postgres_db):
    load(postgres_db.url, LISTENS)
    with pytest.raises(DataSourceError, match=r"no table 'nope'; tables found: listens"):
        read_interactions(postgres_db.url, table="nope")


@pytest.mark.postgres
def test_postgres_password_is_redacted(postgres_db):
    url = postgres_db.url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores the password
    load(postgres_db.url, LISTENS)
    raw = read_interactions(url, table="listens", columns=COLUMNS)
    assert "hunter2" not in raw.source and raw.source.startswith("postgresql://postgres:***@")


# ---------------------------------------------------------------------------------------------- SQLite
def test_sqlite_file_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'listens.db'}"
    seconds = (LISTENS["played_at"] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    load(url, LISTENS.assign(played_at=seconds))  # epoch seconds as integers
    check_listens(read_interactions(url, table="listens", columns=COLUMNS))


def test_sqlite_iso_text_times_and_missing_column(tmp_path):
    url = f"sqlite:///{tmp_path / 'listens.db'}"
    load(url, LISTENS.assign(played_at=LISTENS["played_at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")))
    check_listens(read_interactions(url, table="listens", columns=COLUMNS))
    raw = read_interactions(url, table="listens", columns=ColumnNames("user", "track"))
    with pytest.raises(ValidationError, match=r"missing column 'user'; .*found: 'listener', 'track'"):
        validate(raw)
