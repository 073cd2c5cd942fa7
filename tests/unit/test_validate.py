"""Validation: one test per kind of bad input (message names source, row and column), and clean conversion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.readers import ColumnNames, RawData, read_interactions
from training.validate import ValidationError, to_interactions, validate

HEADER = "user_id,item_id,value,timestamp\n"


def csv_raw(tmp_path, body: str, header: str = HEADER, **kw) -> RawData:
    path = tmp_path / "listens.csv"
    path.write_text(header + body, encoding="utf-8")
    return read_interactions(path, **kw)


def parquet_raw(tmp_path, **columns) -> RawData:
    path = tmp_path / "listens.parquet"
    pq.write_table(pa.table(columns), path)
    return read_interactions(path)


def fails(raw: RawData, pattern: str) -> str:
    with pytest.raises(ValidationError, match=pattern) as info:
        validate(raw)
    message = str(info.value)
    assert message.startswith(raw.source + ": ") and "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_required_column_lists_what_exists(tmp_path):
    raw = csv_raw(tmp_path, "1,2\n", header="listener,track\n", columns=ColumnNames(user="listener"))
    fails(raw, r"missing column 'item_id'; expected .* \(found: 'listener', 'track'\)")


def test_missing_user_id_in_parquet(tmp_path):
    raw = parquet_raw(tmp_path, user_id=pa.array([1, None, 3], pa.int64()), item_id=[1, 2, 3])
    fails(raw, r"listens\.parquet: row 2, column 'user_id': missing user id; expected a non-empty string")


def test_empty_item_id_in_csv(tmp_path):
    raw = csv_raw(tmp_path, "a,x,1,1\nb,  ,1,1\n")
    fails(raw, r"row 3, column 'item_id': empty item id '  '; expected a non-empty string or an integer$")


def test_non_integral_float_id(tmp_path):
    raw = parquet_raw(tmp_path, user_id=[1.0, 2.5], item_id=["a", "b"])
    fails(raw, r"row 2, column 'user_id': user id 2\.5 is not an integer or a string")


def test_non_numeric_value_uses_source_column_name(tmp_path):
    raw = csv_raw(tmp_path, "a,x,3\nb,y,abc\n", header="u,i,plays\n", columns=ColumnNames("u", "i", "plays"))
    fails(raw, r"row 3, column 'plays': 'abc' is not a number; expected a finite number >= 0$")


def test_negative_value(tmp_path):
    raw = csv_raw(tmp_path, "a,x,1,1\nb,y,2,1\nc,z,-4,1\n")
    fails(raw, r"row 4, column 'value': -4\.0 is negative; expected a finite number >= 0")


def test_non_finite_value(tmp_path):
    raw = csv_raw(tmp_path, "a,x,inf,1\n")
    fails(raw, r"row 2, column 'value': inf is not finite; expected a finite number >= 0$")


def test_missing_value(tmp_path):
    raw = parquet_raw(tmp_path, user_id=[1, 2], item_id=[1, 2], value=pa.array([1.0, None]))
    fails(raw, r"row 2, column 'value': missing value")


def test_unparseable_timestamp(tmp_path):
    raw = csv_raw(tmp_path, "a,x,1,2009-05-04T23:08:57Z\nb,y,1,yesterday\n")
    fails(raw, r"row 3, column 'timestamp': cannot read 'yesterday' as a time; expected seconds since the epoch "
               r"or an ISO-8601 date-time$")


def test_missing_timestamp(tmp_path):
    raw = csv_raw(tmp_path, "a,x,1,100\nb,y,1,\n")
    fails(raw, r"row 3, column 'timestamp': missing timestamp")


def test_blank_line_in_the_middle_is_a_bad_row(tmp_path):
    raw = csv_raw(tmp_path, "a,x,1,1\n\nb,y,1,1\n")
    fails(raw, r"row 3, column 'user_id': empty user id")


def test_headerless_format_row_numbers(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t100\n1\t3\t-1\t100\n", encoding="utf-8")
    fails(read_interactions(path), r"u\.data: row 2, column 'rating': -1\.0 is negative")


def test_no_rows(tmp_path):
    fails(csv_raw(tmp_path, ""), r"listens\.csv: no rows; expected at least one interaction")


def test_empty_headerless_file(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("", encoding="utf-8")
    fails(read_interactions(path), r"u\.data: no rows")


def test_first_bad_row_wins_and_the_rest_are_counted(tmp_path):
    raw = csv_raw(tmp_path, "a,x,1,1\nb,y,-1,1\n,z,1,1\nc,w,1,never\n")
    fails(raw, r"row 3, column 'value': -1\.0 is negative; expected a finite number >= 0 \(and 2 more rows\)$")


def test_nothing_left_after_filtering(tmp_path):
    raw = csv_raw(tmp_path, "a,x,1,1\nb,y,1,1\n")
    with pytest.raises(ValidationError, match=r"^.*listens\.csv: no interactions left after filtering"):
        to_interactions(raw, min_user_interactions=2)


# ---------------------------------------------------------------------------------------------- clean input
def test_clean_frame_types_and_canonical_ids(tmp_path):
    raw = RawData(pd.DataFrame({"user_id": pd.Series([7, "7 ", 3.0, "x"], dtype=object),
                                "item_id": ["a", " b", "c", "d"], "value": [1, 2, 3, 4]}), "mem", "csv", 2)
    clean = validate(raw)
    assert clean["user_id"].tolist() == ["7", "7", "3", "x"]
    assert clean["item_id"].tolist() == ["a", "b", "c", "d"]
    assert clean["value"].dtype == np.float64 and "timestamp" not in clean


def test_timestamps_iso_numeric_and_offsets(tmp_path):
    raw = csv_raw(tmp_path, "a,x,1,2009-05-04T23:08:57Z\nb,y,1,1241478537\nc,z,1,2009-05-05T01:08:57+02:00\n")
    clean = validate(raw)
    assert clean["timestamp"].dtype == np.float64
    assert clean["timestamp"].tolist() == [1241478537.0] * 3


def test_naive_datetimes_are_utc(tmp_path):
    times = pa.array(pd.to_datetime(["2009-05-04 23:08:57"]).to_pydatetime().tolist(), pa.timestamp("us"))
    raw = parquet_raw(tmp_path, user_id=[1], item_id=[2], timestamp=times)
    assert validate(raw)["timestamp"].tolist() == [1241478537.0]


def test_duplicates_are_summed_and_latest_time_kept(tmp_path):
    data = to_interactions(csv_raw(tmp_path, "u1,i1,2,100\nu1,i1,3,300\nu2,i1,1,200\nu2,i2,1,200\n"))
    u, i = data.users.index("u1"), data.items.index("i1")
    assert data.matrix[u, i] == pytest.approx(5.0)
    assert data.timestamps[u, i] == pytest.approx(300.0)
    assert data.nnz == 3


def test_min_interactions_filter(tmp_path):
    data = to_interactions(csv_raw(tmp_path, "a,x,1,1\na,y,1,1\nb,x,1,1\n"), min_user_interactions=2)
    assert data.users.ids.tolist() == ["a"] and data.n_items == 2


def test_integer_ids_stay_integers_in_the_core(tmp_path):
    data = to_interactions(parquet_raw(tmp_path, user_id=[10, 20], item_id=[1, 2], value=[1, 1]))
    assert data.users.kind == "int" and data.users.externals([0, 1]) == [10, 20]
