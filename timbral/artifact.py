"""Model artifacts as plain data: arrays in ``.npz``, metadata in JSON, a sha256 for every file.

Loading never unpickles: ``np.load(..., allow_pickle=False)`` refuses object arrays, and every file's
checksum is verified before it is read, so a truncated or tampered artifact fails with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "metadata.json"
CHECKSUMS_FILE = "checksums.json"
FORMAT_NAME = "timbral-artifact"
FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """The artifact directory is missing, incomplete, modified or of an unknown format."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_artifact(directory: str | os.PathLike[str], arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write ``arrays`` and ``metadata`` into ``directory`` (created if needed) with checksums."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if np.asarray(arr).dtype.hasobject:  # also structured dtypes with an object field
            raise ArtifactError(f"array '{name}' has dtype object; artifacts hold plain numeric or string arrays only")
    np.savez(out / ARRAYS_FILE, **arrays)
    # the format keys come last: metadata carried over from a loaded artifact must not relabel this file
    meta = {**metadata, "format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=json_default))
    checksums = {name: sha256_file(out / name) for name in (ARRAYS_FILE, METADATA_FILE)}
    (out / CHECKSUMS_FILE).write_text(json.dumps(checksums, indent=2, sort_keys=True))
    return out


def verify_artifact(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Check every listed file's sha256; return the checksums. Raise ArtifactError on any mismatch."""
    root = Path(directory)
    sums_path = root / CHECKSUMS_FILE
    if not sums_path.is_file():
        raise ArtifactError(f"{root}: no {CHECKSUMS_FILE}; not a Timbral model artifact")
    try:
        checksums = json.loads(sums_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{sums_path}: unreadable checksum file ({exc})") from None
    for required in (ARRAYS_FILE, METADATA_FILE):
        if required not in checksums:
            raise ArtifactError(f"{sums_path}: no checksum listed for {required}")
    for name, expected in checksums.items():
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path}: file listed in {CHECKSUMS_FILE} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path}: sha256 mismatch (expected {expected[:12]}…, found {actual[:12]}…); "
                "the artifact was modified or truncated after it was saved"
            )
    return checksums


def load_artifact(directory: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Verify then load an artifact: ``(arrays, metadata)``. Never unpickles."""
    root = Path(directory)
    verify_artifact(root)
    try:
        metadata = json.loads((root / METADATA_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{root / METADATA_FILE}: not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{root / METADATA_FILE}: expected a JSON object, got {type(metadata).__name__}")
    if metadata.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{root / METADATA_FILE}: format is {metadata.get('format')!r}, expected {FORMAT_NAME!r}")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{root / METADATA_FILE}: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{root}: artifact format version {metadata.get('format_version')} is newer than this code "
            f"understands ({FORMAT_VERSION}); upgrade timbral"
        )
    try:
        with np.load(root / ARRAYS_FILE, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise ArtifactError(f"{root / ARRAYS_FILE}: refused to load ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{root / ARRAYS_FILE}: unreadable ({exc})") from None
    return arrays, metadata


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
