"""Read interactions from CSV, Parquet, SQL or a public data set into one canonical pandas DataFrame.

The frame has the columns ``user_id``, ``item_id``, ``value`` and, when the source has times, ``timestamp``.
Ids are left as the source typed them (validation makes them canonical strings). ``value`` is 1.0 per row when
the source has no value column (implicit feedback). Values and times are converted to float64 (times to seconds
since the epoch, UTC) when every row converts; otherwise they are left as read so ``training.validate`` can name
the exact bad row. Nothing is dropped here except blank lines at the very end of a text file.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from training.formats import (  # noqa: F401 - re-exported: the readers' public names
    FORMATS,
    LAYOUTS,
    DataSourceError,
    base_name,
    detect_format,
    lastfm_items,
    open_text,
)

CANONICAL = ("user_id", "item_id", "value", "timestamp")
SQL_DIALECTS = ("postgresql", "postgres", "sqlite", "mysql", "mariadb", "mssql", "oracle", "duckdb", "snowflake")
@dataclass
class ColumnNames:
    """Names of the source columns to read; ``value`` and ``time`` are optional in the source."""

    user: str = "user_id"
    item: str = "item_id"
    value: str = "value"
    time: str = "timestamp"

    def mapping(self) -> dict[str, str]:
        """Canonical name -> source name."""
        return {"user_id": self.user, "item_id": self.item, "value": self.value, "timestamp": self.time}


@dataclass
class RawData:
    """Interactions as read, before validation.

    ``row_offset`` turns a 0-based frame position into the row number a person sees (2 for a CSV with a
    header, 1 for headerless files, Parquet and SQL). ``labels`` maps canonical column names to the names used
    in the source (for messages); ``source_columns`` lists the columns the source actually has.
    """

    frame: pd.DataFrame
    source: str
    fmt: str
    row_offset: int
    labels: dict[str, str] = field(default_factory=dict)
    source_columns: tuple[str, ...] = ()

    def label(self, canonical: str) -> str:
        return self.labels.get(canonical, canonical)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Make ``value`` (1.0 when absent) and ``timestamp`` float64 when every row converts cleanly."""
    from training.validate import to_numbers, to_seconds  # validate imports this module

    if "value" not in frame:
        frame["value"] = np.ones(len(frame))
    for column, convert in (("value", to_numbers), ("timestamp", to_seconds)):
        if column in frame:
            converted = convert(frame[column])
            if not np.isnan(converted[frame[column].notna().to_numpy()]).any():
                frame[column] = converted
    return frame[[c for c in CANONICAL if c in frame]]


# ---------------------------------------------------------------------------------------------- sources
def is_sql_url(source: str) -> bool:
    match = re.match(r"^([A-Za-z][A-Za-z0-9.-]*)(\+[A-Za-z0-9_.-]+)?://", str(source))
    return bool(match) and match.group(1).lower() in SQL_DIALECTS


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable as an SQLAlchemy URL: redact textually
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def read_interactions(source: str, *, fmt: str = "auto", table: str | None = None,
                      columns: ColumnNames | None = None) -> RawData:
    """Read ``source`` (a file path or an SQLAlchemy URL) as ``fmt`` (one of ``FORMATS``; ``auto`` detects).

    ``table`` is required for SQL sources (``schema.table`` allowed). ``columns`` names the source columns for
    ``csv``/``parquet``/``sql``; the public formats have fixed layouts and ignore it.
    """
    columns = columns if columns is not None else ColumnNames()
    source = str(source)
    if fmt not in FORMATS:
        raise DataSourceError(f"{redact(source)}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "sql" or (fmt == "auto" and is_sql_url(source)):
        return _read_sql(source, table, columns)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", source):
        raise DataSourceError(f"{redact(source)}: unsupported URL; expected a local file path or an SQL URL "
                              f"({', '.join(SQL_DIALECTS)})")
    path = Path(source)
    if not path.is_file():
        raise DataSourceError(f"{source}: file not found" if not path.exists() else f"{source}: not a file")
    if fmt == "auto":
        fmt = detect_format(path, columns.user)
    try:
        return _read_file(path, fmt, columns)
    except DataSourceError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataSourceError(f"{source}: cannot read as {fmt}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- files
def _read_file(path: Path, fmt: str, columns: ColumnNames) -> RawData:
    if fmt == "parquet":
        return _read_parquet(path, columns)
    tab = base_name(path).endswith(".tsv")
    delimiter, names, wanted = ("\t" if tab else ",", None, columns.mapping()) if fmt == "csv" else LAYOUTS[fmt]
    quoting = fmt in ("csv", "movielens-csv")  # the public TSV/DAT files use quotes as ordinary characters
    header = names or _header(path, delimiter, quoting)
    wanted, labels = _pick(wanted, header)
    extra = {"lastfm-360k": ["artist-name"], "lastfm-1k": ["artist-name", "track-name"]}.get(fmt, [])
    ids = [wanted[c] for c in ("user_id", "item_id") if c in wanted] + extra
    table = _arrow_csv(path, delimiter, names, quoting, list(dict.fromkeys([*wanted.values(), *extra])), ids)
    if fmt in ("lastfm-360k", "lastfm-1k"):
        table = lastfm_items(table, fmt)
    frame = pd.DataFrame({canon: table.column(col).to_pandas() for canon, col in wanted.items()})
    if fmt == "lastfm-1k":
        frame["value"] = 1.0
    frame = _drop_trailing_blank(frame)
    return RawData(_normalise(frame), str(path), fmt, 1 if names else 2, labels, tuple(header))


def _pick(requested: dict[str, str], available) -> tuple[dict[str, str], dict[str, str]]:
    """(canonical -> source column for the columns present, canonical -> name to show in messages).

    A column matches by name, else by a unique case-insensitive match (SQL folds unquoted names). An empty
    name (or None) means the source has no such column (e.g. ``value=""``: implicit feedback).
    """
    wanted, labels = {}, {}
    for canon, name in requested.items():
        if not name:
            continue
        matches = [a for a in available if a.lower() == name.lower()]
        found = name if name in available else (matches[0] if len(matches) == 1 else None)
        labels[canon] = found or name
        if found is not None:
            wanted[canon] = found
    return wanted, labels


def _header(path: Path, delimiter: str, quoting: bool) -> list[str]:
    with open_text(path) as fh:
        row = next(csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE), [])
    if not row:
        raise DataSourceError(f"{path}: empty file; expected a header line")
    return [h.strip() for h in row]


def _arrow_csv(path: Path, delimiter: str, names, quoting: bool, include: list[str], ids: list[str]):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    read = pcsv.ReadOptions(column_names=names, block_size=1 << 24)
    parse = pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False, ignore_empty_lines=False)

    def convert(as_text):
        return pcsv.ConvertOptions(include_columns=include, column_types={c: pa.string() for c in as_text},
                                   quoted_strings_can_be_null=False)

    try:
        try:
            return pcsv.read_csv(path, read, parse, convert(ids))
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc).lower():
                raise
            return pcsv.read_csv(path, read, parse, convert(include))  # text throughout; validation decides
    except pa.ArrowInvalid as exc:
        if "empty csv" in str(exc).lower():  # a headerless file without lines: no rows (validation says so)
            return pa.table({c: pa.array([], pa.string()) for c in include})
        where = _bad_line(path, delimiter, quoting, len(names) if names else None)
        raise DataSourceError(f"{path}: {where or _first_line(exc)}") from exc


def _bad_line(path: Path, delimiter: str, quoting: bool, expected: int | None) -> str | None:
    """The first line whose number of fields differs from the header's (or ``expected``)."""
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        for row in reader:
            expected = expected or len(row)
            if row and len(row) != expected:
                return f"line {reader.line_num}: found {len(row)} fields; expected {expected} separated by {delimiter!r}"
    return None


def _drop_trailing_blank(frame: pd.DataFrame) -> pd.DataFrame:
    """Blank lines at the end of a file are not rows (blank lines elsewhere are, and fail validation)."""
    n = len(frame)
    while n and all(pd.isna(v) or (isinstance(v, str) and not v.strip()) for v in frame.iloc[n - 1]):
        n -= 1
    return frame.iloc[:n].reset_index(drop=True) if n < len(frame) else frame


def _read_parquet(path: Path, columns: ColumnNames) -> RawData:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        wanted, labels = _pick(columns.mapping(), names)
        table = pq.read_table(path, columns=list(dict.fromkeys(wanted.values())))
    except (pa.ArrowException, OSError) as exc:
        raise DataSourceError(f"{path}: cannot read as parquet: {_first_line(exc)}") from exc
    frame = pd.DataFrame({canon: table.column(col).to_pandas() for canon, col in wanted.items()})
    return RawData(_normalise(frame), str(path), "parquet", 1, labels, tuple(names))


# ---------------------------------------------------------------------------------------------- SQL
def _read_sql(url: str, table: str | None, columns: ColumnNames) -> RawData:
    import sqlalchemy

    shown = redact(url)
    if not table:
        raise DataSourceError(f"{shown}: an SQL source needs a table; pass table= (e.g. --table listens)")
    if url.startswith("postgres://"):  # the Heroku-style spelling SQLAlchemy does not accept
        url = "postgresql://" + url[len("postgres://"):]
    schema, _, name = table.rpartition(".")
    try:
        engine = sqlalchemy.create_engine(url)
    except (sqlalchemy.exc.ArgumentError, ImportError, ValueError) as exc:
        raise DataSourceError(f"{shown}: cannot use this URL: {_first_line(exc)}") from exc
    password = engine.url.password
    try:
        with engine.connect() as conn:
            inspector = sqlalchemy.inspect(conn)
            if not inspector.has_table(name, schema=schema or None):
                tables = ", ".join(sorted(inspector.get_table_names(schema=schema or None))) or "none"
                raise DataSourceError(f"{shown}: no table {table!r}; tables found: {tables}")
            names = [c["name"] for c in inspector.get_columns(name, schema=schema or None)]
            wanted, labels = _pick(columns.mapping(), names)
            selected = list(dict.fromkeys(wanted.values()))
            source = sqlalchemy.table(name, *(sqlalchemy.column(c) for c in selected), schema=schema or None)
            query = sqlalchemy.select(*(source.c[c] for c in selected))
            result = pd.read_sql(query, conn) if selected else pd.DataFrame()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        message = _first_line(exc)  # a driver may echo the password
        raise DataSourceError(f"{shown}: {message.replace(password, '***') if password else message}") from exc
    finally:
        engine.dispose()
    frame = pd.DataFrame({canon: result[col] for canon, col in wanted.items()})
    return RawData(_normalise(frame), shown, "sql", 1, labels, tuple(names))

