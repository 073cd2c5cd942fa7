"""The real-data fetcher's checks, on local fake wheels (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import pytest

from training.readers import read_interactions
from training.realdata import DATASETS, ChecksumError, RealDataError, extract_verified, fetch

ROWS = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
HEADER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def fake_wheel(tmp_path, member: str, payload: bytes):
    path = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
    return path


def spec_for(payload: bytes):
    return dataclasses.replace(DATASETS["ml-100k"], sha256=hashlib.sha256(payload).hexdigest())


def test_a_member_whose_checksum_differs_is_refused_and_nothing_is_written(tmp_path):
    spec = DATASETS["ml-100k"]
    wheel = fake_wheel(tmp_path, spec.member, HEADER + ROWS)
    dest = tmp_path / "ml-100k" / "u.data"
    with pytest.raises(ChecksumError, match=rf"has sha256 {hashlib.sha256(HEADER + ROWS).hexdigest()}, "
                                            rf"expected {spec.sha256}; refusing"):
        extract_verified(wheel, spec, dest)
    assert not dest.exists() and not dest.parent.exists()


def test_a_checked_member_is_written_without_its_header_and_read_as_movielens(tmp_path):
    spec = spec_for(HEADER + ROWS)
    dest = extract_verified(fake_wheel(tmp_path, spec.member, HEADER + ROWS), spec, tmp_path / "ml" / "u.data")
    assert dest.read_bytes() == ROWS
    raw = read_interactions(dest)
    assert raw.fmt == "movielens-100k"
    assert raw.frame["value"].tolist() == [3.0, 3.0] and raw.frame["timestamp"].tolist() == [881250949.0, 891717742.0]


def test_a_wheel_without_the_member_says_so(tmp_path):
    spec = DATASETS["ml-100k"]
    with pytest.raises(RealDataError, match=r"ml-100k: cannot read recbole/dataset_example/ml-100k/ml-100k.inter"):
        extract_verified(fake_wheel(tmp_path, "other/file.txt", ROWS), spec, tmp_path / "u.data")


def test_fetch_checks_a_cached_wheel_too(tmp_path):
    spec = DATASETS["ml-100k"]
    (tmp_path / "wheels").mkdir()
    fake_wheel(tmp_path, spec.member, HEADER + ROWS).rename(tmp_path / "wheels" / spec.wheel)
    with pytest.raises(ChecksumError):
        fetch("ml-100k", tmp_path)
    with pytest.raises(RealDataError, match="unknown real data set 'ml-1m'"):
        fetch("ml-1m", tmp_path)
