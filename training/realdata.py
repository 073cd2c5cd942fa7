"""Real public data sets for ``make bench-train`` and the real-data test, fetched from a package registry.

MovieLens' licence forbids redistributing it, so it is never committed. RecBole's PyPI wheel ships MovieLens
100k as an example data set (the rows of MovieLens' ``u.data`` under a one-line header): ``fetch`` downloads
that wheel with pip into ``data/real/`` (git-ignored), checks the member's sha256 and writes it out in
MovieLens' own ``u.data`` layout (tab-separated, no header), which ``training.readers`` recognises by name.

    python -m training.realdata                  # fetch every data set below, print where each came from
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "data" / "real"


@dataclass(frozen=True)
class RealDataSet:
    name: str
    title: str
    requirement: str  # what pip downloads (no dependencies)
    wheel: str  # the file name pip saves
    member: str  # the data file inside the wheel
    sha256: str  # of that member, as published in the wheel
    filename: str  # written under <cache>/<name>/, in the layout our reader knows
    header_lines: int  # lines above the rows in the member

    @property
    def origin(self) -> str:
        return f"`{self.member}` from the PyPI wheel {self.requirement} (sha256 of the member checked)"


DATASETS = {
    "ml-100k": RealDataSet(
        name="ml-100k",
        title="MovieLens 100k (real: explicit ratings 1–5 as values)",
        requirement="recbole==1.2.1",
        wheel="recbole-1.2.1-py3-none-any.whl",
        member="recbole/dataset_example/ml-100k/ml-100k.inter",
        sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        filename="u.data",
        header_lines=1,
    ),
}


class RealDataError(RuntimeError):
    """A real data set could not be fetched or written; the message says which and why."""


class ChecksumError(RealDataError):
    """The downloaded data is not the data we pinned: nothing was written."""


def download_wheel(spec: RealDataSet, wheels: Path) -> Path:
    """The wheel that ships ``spec``, downloaded with pip into ``wheels`` unless already there."""
    path = wheels / spec.wheel
    if path.is_file():
        return path
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--dest", str(wheels), spec.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RealDataError(f"{spec.name}: `pip download {spec.requirement}` did not give {spec.wheel}:\n{tail}")
    return path


def extract_verified(wheel: Path, spec: RealDataSet, dest: Path) -> Path:
    """Write ``spec.member`` of ``wheel`` to ``dest`` without its header lines, after checking its sha256.

    Raises ``ChecksumError`` (and writes nothing) when the member's digest is not the pinned one.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            payload = zf.read(spec.member)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise RealDataError(f"{spec.name}: cannot read {spec.member} from {wheel}: {exc}") from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != spec.sha256:
        raise ChecksumError(f"{spec.name}: {spec.member} in {wheel} has sha256 {digest}, expected {spec.sha256}; "
                            f"refusing to use it (delete {wheel} to download it again)")
    rows = payload.split(b"\n", spec.header_lines)[-1] if spec.header_lines else payload
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file() or dest.read_bytes() != rows:
        partial = dest.with_name(dest.name + ".partial")
        partial.write_bytes(rows)
        partial.replace(dest)
    return dest


def fetch(name: str, cache: Path | str | None = None) -> Path:
    """The path of data set ``name`` in our reader's layout, downloaded and checked as needed.

    The wheel is kept under ``<cache>/wheels/``; every call checks the member's digest again before writing.
    """
    if name not in DATASETS:
        raise RealDataError(f"unknown real data set {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    wheel = download_wheel(spec, cache / "wheels")
    return extract_verified(wheel, spec, cache / spec.name / spec.filename)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=list(DATASETS), help=f"data sets (default: {' '.join(DATASETS)})")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where wheels and data go (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        for name in args.names:
            path = fetch(name, args.cache)
            print(f"{name}: {path} — {DATASETS[name].origin}")
    except RealDataError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
