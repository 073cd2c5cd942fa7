"""Validate raw interactions with precise messages, and turn them into the core ``Interactions``.

Every problem is reported as one line naming the source, the row a person sees in it, and the column::

    data/listens.csv: row 7, column 'plays': 'abc' is not a number; expected a finite number >= 0 (and 2 more rows)

Bad rows are never dropped silently: one bad row rejects the data set, and the message points at the first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from timbral.interactions import InteractionError, Interactions, canonical_id
from training.readers import RawData

_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
REQUIRED = ("user_id", "item_id")

# a check gives, per row, True when the row is bad, and a describer: position -> (what is wrong, expected rule)
Check = tuple[np.ndarray, Callable[[int], tuple[str, str]]]


class ValidationError(ValueError):
    """Interactions that cannot be used; the message names source, row and column."""


# ---------------------------------------------------------------------------------------------- conversions
def to_numbers(series: pd.Series) -> np.ndarray:
    """Float64 values; NaN where a row is missing or not a number."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return series.astype("float64").to_numpy(na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(na_value=np.nan)


def to_seconds(series: pd.Series) -> np.ndarray:
    """Seconds since the epoch (float64) from numbers, datetimes or ISO-8601 strings; NaN where impossible.

    Numbers are taken as seconds; naive datetimes as UTC.
    """
    if pd.api.types.is_datetime64_any_dtype(series):
        if series.dt.tz is None:
            series = series.dt.tz_localize("UTC")
        return ((series - _EPOCH) / pd.Timedelta(seconds=1)).astype("float64").to_numpy(na_value=np.nan)
    if pd.api.types.is_bool_dtype(series):
        return np.full(len(series), np.nan)
    if pd.api.types.is_numeric_dtype(series):
        return series.astype("float64").to_numpy(na_value=np.nan)
    out = np.array(pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(na_value=np.nan))
    todo = np.isnan(out) & series.notna().to_numpy()
    if todo.any():
        rest = series[todo]
        if pd.api.types.infer_dtype(rest, skipna=True) == "string":
            parsed = pd.to_datetime(rest.str.strip(), utc=True, errors="coerce", format="ISO8601")
        else:  # python datetimes or mixed objects
            parsed = pd.to_datetime(rest, utc=True, errors="coerce")
        out[todo] = to_seconds(pd.Series(parsed, index=rest.index))
    return out


# ---------------------------------------------------------------------------------------------- checks
def _show(value) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _missing(value) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value))


def _canonical_ids(series: pd.Series, what: str) -> tuple[pd.Series, Check]:
    """Canonical string ids and the rows whose id is missing, empty or not an integer/string."""
    rule = "a non-empty string or an integer"
    if pd.api.types.is_bool_dtype(series):
        return series.astype(str), (np.ones(len(series), bool), lambda i: (f"{what} id is a boolean", rule))
    missing = series.isna().to_numpy()
    if pd.api.types.is_integer_dtype(series):
        ids = series.astype("str")
        bad = missing
    elif pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        whole = np.isfinite(values) & (np.mod(values, 1.0) == 0) & (np.abs(values) < 2.0**63)
        ids = pd.Series(np.where(whole, values, 0).astype(np.int64), index=series.index).astype("str")
        bad = ~whole
    elif isinstance(series.dtype, pd.StringDtype) or pd.api.types.infer_dtype(series, skipna=True) == "string":
        ids = series.astype("str").str.strip()
        bad = missing | (ids == "").to_numpy(dtype=bool, na_value=True)
    else:  # objects of mixed types (e.g. from SQL): one at a time
        canon = []
        for value in series.tolist():
            try:
                canon.append("" if _missing(value) else canonical_id(value))
            except InteractionError:
                canon.append("")
        ids = pd.Series(canon, index=series.index, dtype="str")
        bad = (ids == "").to_numpy(dtype=bool)

    def describe(i: int) -> tuple[str, str]:
        value = series.iloc[i]
        if _missing(value):
            return f"missing {what} id", rule
        if isinstance(value, str) and not value.strip():
            return f"empty {what} id {_show(value)}", rule
        return f"{what} id {_show(value)} is not an integer or a string", rule

    return ids, (np.asarray(bad, dtype=bool), describe)


def _check_values(series: pd.Series) -> tuple[np.ndarray, Check]:
    values = to_numbers(series)
    rule = "a finite number >= 0"
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0)

    def describe(i: int) -> tuple[str, str]:
        raw, value = series.iloc[i], values[i]
        if _missing(raw) or (isinstance(raw, str) and not raw.strip()):
            return "missing value", rule
        if np.isnan(value) and not _parses_as_float(raw):
            return f"{_show(raw)} is not a number", rule
        if not np.isfinite(value) or np.isnan(value):
            return f"{_show(raw)} is not finite", rule
        return f"{_show(raw)} is negative", rule

    return values, (bad, describe)


def _parses_as_float(raw) -> bool:
    try:
        float(raw)
        return True
    except (TypeError, ValueError):
        return False


def _check_times(series: pd.Series) -> tuple[np.ndarray, Check]:
    seconds = to_seconds(series)
    rule = "seconds since the epoch or an ISO-8601 date-time"
    bad = ~np.isfinite(seconds)

    def describe(i: int) -> tuple[str, str]:
        raw = series.iloc[i]
        if _missing(raw) or (isinstance(raw, str) and not raw.strip()):
            return "missing timestamp", rule
        return f"cannot read {_show(raw)} as a time", rule

    return seconds, (bad, describe)


# ---------------------------------------------------------------------------------------------- entry points
def validate(raw: RawData) -> pd.DataFrame:
    """Check every row and return a clean frame: ``user_id``/``item_id`` canonical strings, ``value`` float64,
    ``timestamp`` float64 seconds (when the source has times).

    Raises ``ValidationError`` naming the source, the first bad row (as numbered in the source) and its column,
    with the number of further bad rows. Duplicate (user, item) rows are kept here; ``to_interactions`` (the
    core) combines them by summing their values.
    """
    frame = raw.frame
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        names = ", ".join(repr(raw.label(c)) for c in missing)
        found = ", ".join(repr(c) for c in (raw.source_columns or tuple(frame.columns))) or "none"
        raise ValidationError(f"{raw.source}: missing column {names}; expected columns for user and item ids "
                              f"(found: {found})")
    if len(frame) == 0:
        raise ValidationError(f"{raw.source}: no rows; expected at least one interaction")
    out, checks = {}, {}
    out["user_id"], checks["user_id"] = _canonical_ids(frame["user_id"], "user")
    out["item_id"], checks["item_id"] = _canonical_ids(frame["item_id"], "item")
    if "value" in frame:
        out["value"], checks["value"] = _check_values(frame["value"])
    else:
        out["value"] = np.ones(len(frame))
    if "timestamp" in frame:
        out["timestamp"], checks["timestamp"] = _check_times(frame["timestamp"])
    _raise_first(raw, checks)
    return pd.DataFrame({k: (v.reset_index(drop=True) if isinstance(v, pd.Series) else v) for k, v in out.items()})


def _raise_first(raw: RawData, checks: dict[str, Check]) -> None:
    any_bad = np.zeros(len(raw.frame), dtype=bool)
    for bad, _ in checks.values():
        any_bad |= bad
    if not any_bad.any():
        return
    first = int(np.argmax(any_bad))
    column = next(c for c, (bad, _) in checks.items() if bad[first])
    what, rule = checks[column][1](first)
    more = int(any_bad.sum()) - 1
    tail = f" (and {more} more row{'s' if more > 1 else ''})" if more else ""
    raise ValidationError(f"{raw.source}: row {first + raw.row_offset}, column '{raw.label(column)}': "
                          f"{what}; expected {rule}{tail}")


def to_interactions(raw: RawData, *, min_user_interactions: int = 1, min_item_interactions: int = 1) -> Interactions:
    """Validate ``raw`` and build the core ``Interactions``.

    Duplicate (user, item) rows are combined by summing their values (play counts add up) and keeping the
    latest timestamp. Users and items with fewer distinct interactions than the minimums are dropped
    (repeatedly); if nothing is left, ``ValidationError`` names the source.
    """
    frame = validate(raw)
    try:
        return Interactions.from_arrays(
            frame["user_id"].to_numpy(),
            frame["item_id"].to_numpy(),
            frame["value"].to_numpy(dtype=np.float64),
            frame["timestamp"].to_numpy(dtype=np.float64) if "timestamp" in frame else None,
            min_user_interactions=min_user_interactions,
            min_item_interactions=min_item_interactions,
        )
    except InteractionError as exc:
        raise ValidationError(f"{raw.source}: {exc}; expected at least one user and item meeting the minimums "
                              f"({len(frame)} rows read)") from exc
