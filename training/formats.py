"""The public data-set layouts (MovieLens, Last.fm) and how a file's format is recognised.

MovieLens 100k ``u.data`` (tab, no header), 1M ``ratings.dat`` (``::``), ``ratings.csv`` (header
``userId,movieId,rating,timestamp``); Last.fm hetrec-2011 ``user_artists.dat`` (tab, header), the 360K
``usersha1-artmbid-artname-plays.tsv`` and the 1K ``userid-timestamp-artid-artname-traid-traname.tsv`` dumps
(tab, no header; quotes are ordinary characters there).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import re
from pathlib import Path

FORMATS = ("auto", "csv", "parquet", "sql", "movielens-100k", "movielens-1m", "movielens-csv",
           "lastfm-2k", "lastfm-360k", "lastfm-1k")
_KNOWN_FILES = {"u.data": "movielens-100k", "ratings.dat": "movielens-1m", "user_artists.dat": "lastfm-2k",
                "usersha1-artmbid-artname-plays.tsv": "lastfm-360k",
                "userid-timestamp-artid-artname-traid-traname.tsv": "lastfm-1k"}


class DataSourceError(ValueError):
    """The source cannot be read: missing, unreadable, or of an unknown format. The message names it."""


def open_text(path: Path):
    """Open a (possibly .gz/.bz2 compressed) text file for sniffing."""
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8", errors="replace", newline="")


def base_name(path: Path) -> str:
    """The lower-case file name without a compression suffix."""
    return path.name.lower().removesuffix(".gz").removesuffix(".bz2")


def detect_format(path: Path, user_column: str = "user_id") -> str:
    """The format of a file from its name, then its first bytes and first line."""
    name = base_name(path)
    if name in _KNOWN_FILES:
        return _KNOWN_FILES[name]
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1" or name.endswith((".parquet", ".pq")):
        return "parquet"
    with open_text(path) as fh:
        line = fh.readline().rstrip("\r\n")
    header = next(csv.reader([line]), [])
    if user_column not in header and [h.strip() for h in header[:3]] == ["userId", "movieId", "rating"]:
        return "movielens-csv"
    if line.split("\t")[:3] == ["userID", "artistID", "weight"]:
        return "lastfm-2k"
    parts = line.split("::")
    if len(parts) == 4 and all(p.strip().lstrip("-").replace(".", "").isdigit() for p in parts):
        return "movielens-1m"
    fields = line.split("\t")
    if len(fields) == 4 and all(f.strip().replace(".", "").isdigit() for f in fields):
        return "movielens-100k"
    if len(fields) == 4 and re.fullmatch(r"[0-9a-f]{40}", fields[0]) and fields[3].strip().isdigit():
        return "lastfm-360k"
    if len(fields) == 6 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ?", fields[1]):
        return "lastfm-1k"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    raise DataSourceError(f"{path}: cannot tell the format from the name or the first line; "
                          f"expected fmt= one of {', '.join(FORMATS[1:])}")


# fmt -> (delimiter, column names for headerless files or None, canonical -> source column)
_MOVIELENS = {"user_id": "user", "item_id": "item", "value": "rating", "timestamp": "timestamp"}
LAYOUTS: dict[str, tuple[str, list[str] | None, dict[str, str]]] = {
    "movielens-100k": ("\t", ["user", "item", "rating", "timestamp"], _MOVIELENS),
    # "1::1193::5::978300760": split on ':' and keep every other field (ratings.dat has no other colons)
    "movielens-1m": (":", ["user", "_1", "item", "_2", "rating", "_3", "timestamp"], _MOVIELENS),
    "movielens-csv": (",", None, {"user_id": "userId", "item_id": "movieId", "value": "rating",
                                  "timestamp": "timestamp"}),
    "lastfm-2k": ("\t", None, {"user_id": "userID", "item_id": "artistID", "value": "weight"}),
    "lastfm-360k": ("\t", ["user-sha1", "artist-mbid", "artist-name", "plays"],
                    {"user_id": "user-sha1", "item_id": "artist-mbid", "value": "plays"}),
    "lastfm-1k": ("\t", ["user", "timestamp", "artist-mbid", "artist-name", "track-mbid", "track-name"],
                  {"user_id": "user", "item_id": "track-mbid", "timestamp": "timestamp"}),
}



def lastfm_items(table, fmt: str):
    """Item ids for Last.fm dumps: the MusicBrainz id, or a name when the id is empty."""
    import pyarrow.compute as pc

    trim = pc.utf8_trim_whitespace
    if fmt == "lastfm-360k":
        mbid, fallback = trim(table.column("artist-mbid")), trim(table.column("artist-name"))
        column = "artist-mbid"
    else:
        mbid, column = trim(table.column("track-mbid")), "track-mbid"
        artist, track = trim(table.column("artist-name")), trim(table.column("track-name"))
        joined = pc.binary_join_element_wise(artist, track, " \u2014 ")
        both_empty = pc.and_(pc.equal(artist, ""), pc.equal(track, ""))
        fallback = pc.if_else(both_empty, "", joined)
    items = pc.if_else(pc.equal(mbid, ""), fallback, mbid)
    return table.set_column(table.schema.get_field_index(column), column, items)
