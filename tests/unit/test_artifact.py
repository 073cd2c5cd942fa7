"""Artifacts: plain arrays + JSON + checksums; tampering, truncation and planted pickles are refused."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from timbral.artifact import (
    ARRAYS_FILE,
    CHECKSUMS_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_FILE,
    ArtifactError,
    load_artifact,
    save_artifact,
    sha256_file,
    verify_artifact,
)


def sample_arrays() -> dict[str, np.ndarray]:
    return {
        "factors": np.arange(12, dtype=np.float32).reshape(3, 4),
        "indptr": np.array([0, 2, 5], dtype=np.int64),
        "ids": np.array(["007", "b", "ü"]),
        "empty": np.zeros(0, dtype=np.float32),
    }


def sample_metadata() -> dict:
    return {"model": "nmf", "n": np.int64(3), "ratio": np.float32(0.5), "nested": {"list": np.array([1, 2])}}


@pytest.fixture
def artifact(tmp_path) -> Path:
    return save_artifact(tmp_path / "model", sample_arrays(), sample_metadata())


def rewrite_checksums(root: Path) -> None:
    """What an attacker who can write the directory can do: make the checksums match the tampered files."""
    sums = {name: sha256_file(root / name) for name in (ARRAYS_FILE, METADATA_FILE)}
    (root / CHECKSUMS_FILE).write_text(json.dumps(sums))


def flip_one_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


class PlantedPayload:
    """Unpickling this calls ``open(marker, "w")``: proof of code execution if the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip(artifact):
    assert sorted(p.name for p in artifact.iterdir()) == sorted([ARRAYS_FILE, METADATA_FILE, CHECKSUMS_FILE])
    arrays, metadata = load_artifact(artifact)
    expected = sample_arrays()
    assert set(arrays) == set(expected)
    for name, arr in expected.items():
        np.testing.assert_array_equal(arrays[name], arr)
        assert arrays[name].dtype == arr.dtype
    assert metadata["format"] == FORMAT_NAME
    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["model"] == "nmf"
    assert metadata["n"] == 3 and metadata["ratio"] == 0.5 and metadata["nested"] == {"list": [1, 2]}
    assert verify_artifact(artifact) == json.loads((artifact / CHECKSUMS_FILE).read_text())


def test_metadata_cannot_override_the_format_keys(tmp_path):
    """Metadata carried over from a loaded artifact (or a caller's extras) must not relabel the new file."""
    root = save_artifact(tmp_path / "a", sample_arrays(), {"format": "other", "format_version": 99})
    _, metadata = load_artifact(root)
    assert metadata["format"] == FORMAT_NAME and metadata["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("name", [ARRAYS_FILE, METADATA_FILE])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_one_changed_byte_fails_naming_the_file(artifact, name, where):
    path = artifact / name
    size = path.stat().st_size
    flip_one_byte(path, {"start": 0, "middle": size // 2, "end": size - 1}[where])
    with pytest.raises(ArtifactError, match=rf"{name}: sha256 mismatch"):
        load_artifact(artifact)


@pytest.mark.parametrize("name", [ARRAYS_FILE, METADATA_FILE])
def test_truncation_fails_naming_the_file(artifact, name):
    path = artifact / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=rf"{name}: sha256 mismatch.*truncated"):
        load_artifact(artifact)


def test_missing_checksums_fail(artifact):
    (artifact / CHECKSUMS_FILE).unlink()
    with pytest.raises(ArtifactError, match=rf"no {CHECKSUMS_FILE}"):
        load_artifact(artifact)


def test_missing_listed_file_fails(artifact):
    (artifact / ARRAYS_FILE).unlink()
    with pytest.raises(ArtifactError, match=rf"{ARRAYS_FILE}: file listed in {CHECKSUMS_FILE} is missing"):
        load_artifact(artifact)


def test_checksums_must_list_both_files(artifact):
    sums = json.loads((artifact / CHECKSUMS_FILE).read_text())
    del sums[METADATA_FILE]
    (artifact / CHECKSUMS_FILE).write_text(json.dumps(sums))
    with pytest.raises(ArtifactError, match=rf"no checksum listed for {METADATA_FILE}"):
        load_artifact(artifact)


def test_unreadable_checksums_fail(artifact):
    (artifact / CHECKSUMS_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable checksum file"):
        load_artifact(artifact)


def test_missing_directory_fails(tmp_path):
    with pytest.raises(ArtifactError, match="not a Timbral model artifact"):
        load_artifact(tmp_path / "nowhere")


def test_planted_object_array_is_refused_without_executing_it(artifact, tmp_path):
    marker = tmp_path / "pwned"
    planted = dict(sample_arrays())
    planted["factors"] = np.array([PlantedPayload(marker)], dtype=object)
    np.savez(artifact / ARRAYS_FILE, allow_pickle=True, **planted)
    rewrite_checksums(artifact)  # checksum checking alone does not save us
    verify_artifact(artifact)
    with pytest.raises(ArtifactError, match=rf"{ARRAYS_FILE}: refused to load"):
        load_artifact(artifact)
    assert not marker.exists()

    # control: the planted file really is live, i.e. the assertion above could fail
    with np.load(artifact / ARRAYS_FILE, allow_pickle=True) as data:
        data["factors"]
    assert marker.exists()


def test_a_bare_pickle_in_place_of_the_npz_is_refused_without_executing_it(artifact, tmp_path):
    marker = tmp_path / "pwned"
    (artifact / ARRAYS_FILE).write_bytes(pickle.dumps(PlantedPayload(marker)))
    rewrite_checksums(artifact)
    with pytest.raises(ArtifactError, match=ARRAYS_FILE):
        load_artifact(artifact)
    assert not marker.exists()


def test_a_corrupt_zip_with_matching_checksums_is_an_artifact_error(artifact):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("factors.npy", b"\x93NUMPY garbage")
    (artifact / ARRAYS_FILE).write_bytes(buf.getvalue()[:-10])
    rewrite_checksums(artifact)
    with pytest.raises(ArtifactError, match=ARRAYS_FILE):
        load_artifact(artifact)


@pytest.mark.parametrize(
    "arr",
    [
        np.array([1, "a"], dtype=object),
        np.zeros(2, dtype=[("x", object)]),  # a structured dtype with an object field pickles too
    ],
)
def test_save_refuses_object_arrays(tmp_path, arr):
    arrays = {**sample_arrays(), "bad": arr}
    with pytest.raises(ArtifactError, match="'bad' has dtype object"):
        save_artifact(tmp_path / "a", arrays, {})
    assert not (tmp_path / "a" / ARRAYS_FILE).exists()


def test_newer_format_version_is_refused(artifact):
    meta = json.loads((artifact / METADATA_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (artifact / METADATA_FILE).write_text(json.dumps(meta))
    rewrite_checksums(artifact)
    with pytest.raises(ArtifactError, match=rf"format version {FORMAT_VERSION + 1} is newer"):
        load_artifact(artifact)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something-else"}, "format is 'something-else'"),
        ({"format_version": "1"}, "format_version '1' is not an integer"),
        ({"format_version": None}, "format_version None is not an integer"),
    ],
)
def test_wrong_format_fields_are_refused(artifact, change, message):
    meta = json.loads((artifact / METADATA_FILE).read_text())
    meta.update(change)
    (artifact / METADATA_FILE).write_text(json.dumps(meta))
    rewrite_checksums(artifact)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(artifact)


@pytest.mark.parametrize(
    ("text", "message"), [("{broken", "not valid JSON"), ("[1, 2]", "expected a JSON object")]
)
def test_malformed_metadata_with_matching_checksums_is_an_artifact_error(artifact, text, message):
    (artifact / METADATA_FILE).write_text(text)
    rewrite_checksums(artifact)
    with pytest.raises(ArtifactError, match=rf"{METADATA_FILE}: {message}"):
        load_artifact(artifact)


def test_saving_again_into_the_same_directory_replaces_the_artifact(artifact):
    save_artifact(artifact, {"x": np.ones(2)}, {"v": 2})
    arrays, metadata = load_artifact(artifact)
    assert set(arrays) == {"x"} and metadata["v"] == 2
