"""Reading every supported format into the canonical frame; detection, renaming, redaction, failures."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.readers import ColumnNames, DataSourceError, detect_format, read_interactions, redact

ISO = pd.Timestamp("2009-05-04T23:08:57Z").timestamp()


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def rows(raw) -> list[tuple]:
    return list(raw.frame.itertuples(index=False, name=None))


# ---------------------------------------------------------------------------------------------- CSV / Parquet
def test_csv_with_all_columns(tmp_path):
    raw = read_interactions(write(tmp_path / "x.csv", "user_id,item_id,value,timestamp\n1,a,2.5,100\n2,b,1,200\n"))
    assert raw.fmt == "csv" and raw.row_offset == 2
    assert list(raw.frame.columns) == ["user_id", "item_id", "value", "timestamp"]
    assert raw.frame["value"].dtype == np.float64 and raw.frame["timestamp"].dtype == np.float64
    assert rows(raw) == [("1", "a", 2.5, 100.0), ("2", "b", 1.0, 200.0)]


def test_csv_without_value_is_implicit_feedback(tmp_path):
    raw = read_interactions(write(tmp_path / "x.csv", "user_id,item_id\nu1,i1\nu2,i2\n"))
    assert list(raw.frame.columns) == ["user_id", "item_id", "value"]
    assert raw.frame["value"].tolist() == [1.0, 1.0]


def test_csv_column_renaming_and_extra_columns_ignored(tmp_path):
    path = write(tmp_path / "plays.csv", "listener,track,plays,when,extra\n7,t1,3,2009-05-04T23:08:57Z,zz\n")
    raw = read_interactions(path, columns=ColumnNames(user="listener", item="track", value="plays", time="when"))
    assert rows(raw) == [("7", "t1", 3.0, ISO)]
    assert raw.labels["value"] == "plays" and "extra" in raw.source_columns


def test_empty_value_column_name_means_implicit(tmp_path):
    raw = read_interactions(write(tmp_path / "x.csv", "u,i,score\na,b,5\n"), columns=ColumnNames("u", "i", "", None))
    assert rows(raw) == [("a", "b", 1.0)]


def test_csv_keeps_ids_as_text(tmp_path):
    raw = read_interactions(write(tmp_path / "x.csv", "user_id,item_id\n007,0042\n"))
    assert rows(raw) == [("007", "0042", 1.0)]


def test_csv_quoted_fields(tmp_path):
    raw = read_interactions(write(tmp_path / "x.csv", 'user_id,item_id,value\n"a, b","say ""hi""",1\n'))
    assert rows(raw) == [("a, b", 'say "hi"', 1.0)]


def test_tsv_and_gzip(tmp_path):
    path = tmp_path / "x.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("user_id\titem_id\tvalue\nu\ti\t4\n")
    raw = read_interactions(path)
    assert raw.fmt == "csv" and rows(raw) == [("u", "i", 4.0)]


def test_trailing_blank_lines_are_not_rows(tmp_path):
    raw = read_interactions(write(tmp_path / "x.csv", "user_id,item_id\na,b\n\n\n"))
    assert len(raw.frame) == 1


def test_csv_wrong_field_count_names_the_line(tmp_path):
    path = write(tmp_path / "x.csv", "user_id,item_id,value\na,b,1\nc,d,2,9\n")
    with pytest.raises(DataSourceError, match=r"x\.csv: line 3: found 4 fields; expected 3"):
        read_interactions(path)


def test_parquet_with_datetimes_and_renaming(tmp_path):
    path = tmp_path / "x.parquet"
    times = [datetime(2009, 5, 4, 23, 8, 57, tzinfo=UTC), datetime(1970, 1, 1, 0, 1, 40, tzinfo=UTC)]
    pq.write_table(pa.table({"u": [1, 2], "i": [10, 20], "r": [4, 5],
                             "t": pa.array(times, pa.timestamp("ms", tz="UTC"))}), path)
    raw = read_interactions(path, columns=ColumnNames("u", "i", "r", "t"))
    assert raw.fmt == "parquet" and raw.row_offset == 1
    assert rows(raw) == [(1, 10, 4.0, ISO), (2, 20, 5.0, 100.0)]


def test_parquet_detected_by_content(tmp_path):
    path = tmp_path / "listens.data"
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["b"]}), path)
    assert read_interactions(path).fmt == "parquet"


# ---------------------------------------------------------------------------------------------- public formats
def test_movielens_100k(tmp_path):
    raw = read_interactions(write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"))
    assert raw.fmt == "movielens-100k" and raw.row_offset == 1
    assert rows(raw) == [("196", "242", 3.0, 881250949.0), ("186", "302", 3.0, 891717742.0)]


def test_movielens_1m(tmp_path):
    raw = read_interactions(write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n"))
    assert raw.fmt == "movielens-1m" and raw.row_offset == 1
    assert rows(raw) == [("1", "1193", 5.0, 978300760.0), ("1", "661", 3.0, 978302109.0)]


def test_movielens_csv(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
    raw = read_interactions(write(tmp_path / "ratings.csv", text))
    assert raw.fmt == "movielens-csv" and raw.row_offset == 2 and raw.labels["value"] == "rating"
    assert rows(raw) == [("1", "1", 4.0, 964982703.0), ("1", "3", 4.5, 964981247.0)]


def test_lastfm_2k(tmp_path):
    raw = read_interactions(write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n"))
    assert raw.fmt == "lastfm-2k" and raw.row_offset == 2
    assert rows(raw) == [("2", "51", 13883.0), ("2", "52", 11690.0)]


def test_lastfm_360k_falls_back_to_artist_name(tmp_path):
    sha = "00000c289a1829a808ac09c00daf10bc3c4e223b"
    text = (f"{sha}\t3bd73256-3905-4f3a-97e2-8b341527f805\tbetty blowtorch\t2137\n"
            f'{sha}\t\t"weird" al\t12\n')
    raw = read_interactions(write(tmp_path / "usersha1-artmbid-artname-plays.tsv", text))
    assert raw.fmt == "lastfm-360k"
    assert rows(raw) == [(sha, "3bd73256-3905-4f3a-97e2-8b341527f805", 2137.0), (sha, '"weird" al', 12.0)]


def test_lastfm_1k_one_play_per_line(tmp_path):
    text = ("user_000001\t2009-05-04T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a\tDeep Dish\t"
            "\tFuck Me Im Famous (Pacha Ibiza)-09-28-2007\n"
            "user_000001\t2009-05-04T13:54:10Z\ta7f7df4a-77d8-4f12-8acd-5c60c93f4de8\t\"Sakamoto\t"
            "f7c1f8f8-b935-45ed-8fc8-7def69d92a10\tThe Last Emperor\n")
    raw = read_interactions(write(tmp_path / "userid-timestamp-artid-artname-traid-traname.tsv", text))
    assert raw.fmt == "lastfm-1k"
    assert rows(raw) == [
        ("user_000001", "Deep Dish \u2014 Fuck Me Im Famous (Pacha Ibiza)-09-28-2007", 1.0, ISO),
        ("user_000001", "f7c1f8f8-b935-45ed-8fc8-7def69d92a10", 1.0, ISO - 33287.0),
    ]


# ---------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize(("name", "first_line", "expected"), [
    ("a.txt", "196\t242\t3\t881250949", "movielens-100k"),
    ("a.txt", "1::1193::5::978300760", "movielens-1m"),
    ("a.csv", "userId,movieId,rating,timestamp", "movielens-csv"),
    ("a.txt", "userID\tartistID\tweight", "lastfm-2k"),
    ("a.tsv", "00000c289a1829a808ac09c00daf10bc3c4e223b\t\tthe name\t12", "lastfm-360k"),
    ("a.tsv", "user_000001\t2009-05-04T23:08:57Z\t\tartist\t\ttrack", "lastfm-1k"),
    ("a.csv", "user_id,item_id", "csv"),
])
def test_detection_by_content(tmp_path, name, first_line, expected):
    assert detect_format(write(tmp_path / name, first_line + "\n")) == expected


def test_explicit_format_overrides_detection(tmp_path):
    raw = read_interactions(write(tmp_path / "data.txt", "5\t6\t1\t100\n"), fmt="movielens-100k")
    assert rows(raw) == [("5", "6", 1.0, 100.0)]


def test_configured_columns_beat_movielens_header(tmp_path):
    path = write(tmp_path / "r.csv", "userId,movieId,rating\n1,2,3\n")
    assert read_interactions(path, columns=ColumnNames("userId", "movieId", "rating")).fmt == "csv"


# ---------------------------------------------------------------------------------------------- failures
def test_missing_file(tmp_path):
    with pytest.raises(DataSourceError, match=r"nope\.csv: file not found"):
        read_interactions(tmp_path / "nope.csv")


def test_unknown_format_name(tmp_path):
    with pytest.raises(DataSourceError, match="unknown format 'xml'"):
        read_interactions(write(tmp_path / "x.csv", "a\n"), fmt="xml")


def test_undetectable_format(tmp_path):
    with pytest.raises(DataSourceError, match=r"x\.bin: cannot tell the format"):
        read_interactions(write(tmp_path / "x.bin", "hello world\n"))


def test_corrupt_parquet(tmp_path):
    with pytest.raises(DataSourceError, match=r"x\.parquet: cannot read as parquet"):
        read_interactions(write(tmp_path / "x.parquet", "not parquet at all"))


def test_sql_needs_a_table(tmp_path):
    with pytest.raises(DataSourceError, match="needs a table"):
        read_interactions(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_unsupported_url():
    with pytest.raises(DataSourceError, match=r"s3://bucket/x\.csv: unsupported URL"):
        read_interactions("s3://bucket/x.csv")


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://alice:s3cret@db.example:5432/music", "postgresql://alice:***@db.example:5432/music"),
    ("postgresql+psycopg2://bob:p%40ss@host/db", "postgresql+psycopg2://bob:***@host/db"),
    ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
])
def test_redaction(url, shown):
    assert redact(url) == shown


def test_connection_failure_is_redacted():
    url = "postgresql://alice:s3cret@127.0.0.1:1/music"
    with pytest.raises(DataSourceError) as info:
        read_interactions(url, table="listens")
    assert "s3cret" not in str(info.value) and str(info.value).startswith("postgresql://alice:***@127.0.0.1:1/music:")
