"""``timbral backup`` / ``timbral restore``: the MLflow backend store and the artifact bucket, restorable.

A backup is one folder ``<dest>/timbral-backup-YYYYmmddTHHMMSSZ/`` (a local folder or ``s3://bucket/prefix``):

    store.pgdump | store.sqlite   the backend store (pg_dump --format=custom, or sqlite's online backup)
    artifacts/<key>               every object under the artifact prefix, under its key relative to the prefix
    manifest.json                 written last (a folder without it is incomplete): time, redacted source URIs,
                                  counts, and the key, size and sha256 of every file

The store is dumped first, then the objects are copied, so every run and version of the dump finds its files.
Restore verifies every checksum before it changes anything, refuses a non-empty target unless ``--force``,
loads the store, re-uploads the objects and checks the restored counts against the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

import click

from training.backup_locations import LocalLocation, location
from training.backup_store import BackendStore, BackupError, redact

FORMAT = "timbral-backup/1"
MANIFEST = "manifest.json"
NAME = re.compile(r"^timbral-backup-(\d{8}T\d{6}Z)(?:-(\d+))?$")
DEFAULT_ARTIFACTS = "s3://timbral-artifacts/mlflow"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _order(name: str) -> tuple[str, int]:
    m = NAME.match(name)
    return (m.group(1), int(m.group(2) or 1)) if m else ("", 0)


def backups(dest) -> list[str]:
    """Our backup folders in ``dest``, oldest first (other folders are never looked at)."""
    return sorted((n for n in dest.folders() if NAME.match(n)), key=_order)


def new_name(dest, now: datetime) -> str:
    base, taken = f"timbral-backup-{now:%Y%m%dT%H%M%SZ}", set(dest.folders())
    return next(n for n in (base, *(f"{base}-{i}" for i in range(2, 10_000))) if n not in taken)


def retention(dest, keep: int | None, extra: str | None = None) -> list[str]:
    """Folders ``--keep`` deletes: all of ours older than the ``keep`` newest complete ones (incomplete folders
    newer than those may be backups in progress and stay)."""
    if keep is None:
        return []
    names = sorted({*backups(dest), *([extra] if extra else [])}, key=_order)
    kept = [n for n in names if n == extra or dest.child(n).exists(MANIFEST)][-keep:]
    return [n for n in names if kept and _order(n) < _order(kept[0])]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _copy(src, key: str, dst, dst_key: str, tmp: Path) -> tuple[int, str]:
    """Copy one file between locations (staged on local disk when neither end is local); (size, sha256)."""
    if isinstance(dst, LocalLocation):
        target = dst.path(dst_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        src.download(key, target)
        return target.stat().st_size, sha256(target)
    if isinstance(src, LocalLocation):
        path = src.path(key)
        dst.upload(dst_key, path)
        return path.stat().st_size, sha256(path)
    staged = tmp / uuid.uuid4().hex
    try:
        src.download(key, staged)
        dst.upload(dst_key, staged)
        return staged.stat().st_size, sha256(staged)
    finally:
        staged.unlink(missing_ok=True)


def _copy_all(pairs, src, dst, tmp: Path, workers: int, title: str) -> dict[str, tuple[int, str]]:
    """Copy (key, dst_key) pairs in parallel with a progress bar; {key: (size, sha256)}."""
    from training.progress import ConsoleReporter

    for loc in (src, dst):
        getattr(loc, "s3", None)  # create boto3 clients before the threads share them
    done: dict[str, tuple[int, str]] = {}
    with ConsoleReporter().stage(title, total=len(pairs)) as update, ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(_copy, src, k, dst, d, tmp): k for k, d in pairs}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            update(len(done))
    return done


def run_backup(store: BackendStore, artifacts, dest, keep: int | None, dry_run: bool, workers: int) -> dict:
    started = time.perf_counter()
    if f"{dest.uri}/".startswith(f"{artifacts.uri}/"):
        raise BackupError(f"--dest {dest.uri} is inside the artifact store {artifacts.uri}")
    store.check_can_dump()
    objects = [(k, s) for k, s in artifacts.files() if not k.endswith("/")]  # "folder" markers hold nothing to restore
    name = new_name(dest, datetime.now(UTC))
    total = sum(s for _, s in objects)
    if dry_run:
        click.echo(f"would back up {store.kind} store {redact(store.uri)} (counts {store.counts()}) and {len(objects)} objects ({_mb(total)}) from {artifacts.uri} "
                   f"to {dest.uri}/{name}")
        for old in retention(dest, keep, extra=name):
            click.echo(f"would delete old backup {dest.uri}/{old}")
        return {"name": name, "dry_run": True}
    folder = dest.child(name)
    dest.ensure()
    with tempfile.TemporaryDirectory(prefix="timbral-backup-") as tmpdir:
        tmp = Path(tmpdir)
        dump = tmp / store.dump_name
        click.echo(f"dumping the {store.kind} store {redact(store.uri)}")
        info = store.dump(dump)
        folder.upload(store.dump_name, dump)
        store_entry = {"file": store.dump_name, "size": dump.stat().st_size, "sha256": sha256(dump),
                       **{k: v for k, v in info.items() if k != "counts"}}
        copied = _copy_all([(k, f"artifacts/{k}") for k, _ in objects], artifacts, folder, tmp, workers,
                           f"Copying {len(objects)} objects")
        import mlflow

        manifest = {
            "format": FORMAT, "name": name, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool": {"mlflow": mlflow.__version__},
            "source": {"backend_store_uri": redact(store.uri), "artifacts": redact(artifacts.uri)},
            "counts": info["counts"], "store": store_entry,
            "artifacts": {"count": len(copied), "bytes": sum(s for s, _ in copied.values())},
            "objects": [{"key": k, "size": copied[k][0], "sha256": copied[k][1]} for k, _ in objects],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        folder.upload(MANIFEST, tmp / MANIFEST)  # last: a backup without its manifest is incomplete
    seconds = time.perf_counter() - started
    click.echo(f"backup {folder.uri}: store {_mb(store_entry['size'])}, {len(objects)} objects "
               f"({_mb(manifest['artifacts']['bytes'])}), counts {info['counts']} in {seconds:.1f}s")
    deleted = retention(dest, keep)
    for old in deleted:
        dest.child(old).delete_all()
        click.echo(f"deleted old backup {dest.uri}/{old}")
    return {**manifest, "uri": folder.uri, "seconds": seconds, "deleted": deleted}


def read_manifest(folder, tmp: Path) -> dict:
    if not folder.exists(MANIFEST):
        raise BackupError(f"{folder.uri} has no {MANIFEST}: not a backup, or an incomplete one")
    folder.download(MANIFEST, tmp / MANIFEST)
    try:
        manifest = json.loads((tmp / MANIFEST).read_text())
    except ValueError as exc:
        raise BackupError(f"{folder.uri}/{MANIFEST} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{folder.uri}: unknown backup format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def verify(folder: LocalLocation, manifest: dict) -> None:
    """Every file of the manifest is there with its size and sha256, or BackupError naming the bad ones."""
    entries = [(manifest["store"]["file"], manifest["store"])]
    entries += [(f"artifacts/{o['key']}", o) for o in manifest["objects"]]
    bad = []
    for key, entry in entries:
        path = folder.path(key)
        if not path.is_file():
            bad.append(f"{key} missing")
        elif path.stat().st_size != entry["size"] or sha256(path) != entry["sha256"]:
            bad.append(f"{key} checksum mismatch")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise BackupError(f"backup {folder.uri} failed verification, nothing was restored: {'; '.join(bad[:3])}{more}")


def run_restore(backup_uri: str, latest: bool, store: BackendStore, artifacts, force: bool, dry_run: bool,
                workers: int) -> dict:
    started = time.perf_counter()
    src = location(backup_uri)
    if latest:
        complete = [n for n in backups(src) if src.child(n).exists(MANIFEST)]
        if not complete:
            raise BackupError(f"no complete backup in {src.uri}")
        src = src.child(complete[-1])
    with tempfile.TemporaryDirectory(prefix="timbral-restore-") as tmpdir:
        tmp = Path(tmpdir)
        manifest = read_manifest(src, tmp)
        local = src
        if not isinstance(src, LocalLocation):  # verify a local copy, then restore exactly what was verified
            local = LocalLocation(tmp / "backup")
            keys = [manifest["store"]["file"], *(f"artifacts/{o['key']}" for o in manifest["objects"])]
            _copy_all([(k, k) for k in keys], src, local, tmp, workers, f"Downloading {len(keys)} files")
        verify(local, manifest)
        click.echo(f"verified {src.uri}: {len(manifest['objects'])} objects and the store match their sha256")
        store.check_can_load(manifest["store"])
        used, occupied = store.used_tables(), next(iter(artifacts.files()), None) is not None
        problems = ([f"store {redact(store.uri)} holds data ({', '.join(used[:4])}{', …' if len(used) > 4 else ''})"]
                    if used else []) + ([f"{artifacts.uri} already holds objects"] if occupied else [])
        if manifest["source"]["artifacts"] != artifacts.uri:
            click.echo(f"note: artifacts go to {artifacts.uri} (backed up from {manifest['source']['artifacts']}); "
                       "start the MLflow server with --artifacts-destination there")
        if dry_run:
            click.echo(f"would restore {manifest['name']} ({manifest['counts']}) into {redact(store.uri)} and "
                       f"{len(manifest['objects'])} objects into {artifacts.uri}")
            for p in problems:
                click.echo(f"would {'overwrite (--force)' if force else 'refuse'}: {p}")
            return {"dry_run": True, "problems": problems}
        if problems and not force:
            raise BackupError(f"refusing to restore over a non-empty target: {'; '.join(problems)} "
                              "(stop the MLflow server and pass --force to replace it)")
        click.echo(f"loading the {store.kind} store into {redact(store.uri)}")
        store.load(local.path(manifest["store"]["file"]))
        artifacts.ensure()
        pairs = [(f"artifacts/{o['key']}", o["key"]) for o in manifest["objects"]]
        _copy_all(pairs, local, artifacts, tmp, workers, f"Uploading {len(pairs)} objects")
    counts = store.counts()
    if counts != manifest["counts"]:
        raise BackupError(f"restored store counts {counts} differ from the backup's {manifest['counts']}")
    seconds = time.perf_counter() - started
    click.echo(f"restored {manifest['name']} in {seconds:.1f}s: {counts['runs']} runs, "
               f"{counts['registered_models']} registered models, {counts['model_versions']} versions, "
               f"{counts['aliases']} aliases, {len(manifest['objects'])} objects")
    return {"counts": counts, "seconds": seconds, "objects": len(manifest["objects"])}


_store_opt = click.option("--backend-store-uri", required=True, envvar="MLFLOW_BACKEND_STORE_URI", show_envvar=True,
                          help="MLflow backend store: postgresql://user:password@host:5432/db or sqlite:///path.")
_artifacts_opt = click.option("--artifacts", "artifacts_uri", default=DEFAULT_ARTIFACTS, show_default=True,
                              envvar="MLFLOW_ARTIFACTS_DESTINATION", show_envvar=True,
                              help="The server's --artifacts-destination: s3://bucket/prefix (or a folder).")
_common = [
    click.option("--dry-run", is_flag=True, help="Say what would be copied, deleted or restored; change nothing."),
    click.option("--pg-bin", default=None, envvar="TIMBRAL_PG_BIN", type=click.Path(file_okay=False),
                 help="Folder with pg_dump/pg_restore of the server's major version [default: PATH]."),
    click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 64), help="Parallel copies."),
]


@contextlib.contextmanager
def _s3_errors():
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise BackupError(f"S3: {exc} (endpoint MLFLOW_S3_ENDPOINT_URL, credentials AWS_*)") from None


def _options(f):
    for opt in reversed([_store_opt, _artifacts_opt, *_common]):
        f = opt(f)
    return f


@click.command("backup")
@_options
@click.option("--dest", required=True, envvar="TIMBRAL_BACKUP_DEST", show_envvar=True,
              help="Where backups go: a folder or s3://bucket/prefix (S3 through MLFLOW_S3_ENDPOINT_URL/AWS_*).")
@click.option("--keep", default=None, type=click.IntRange(min=1),
              help="Afterwards keep only the newest N backups in --dest (only timbral-backup-* folders).")
def backup_command(backend_store_uri, artifacts_uri, dry_run, pg_bin, workers, dest, keep):
    """Back up the MLflow store and every artifact object into <dest>/timbral-backup-<UTC time>/."""
    with _s3_errors():
        run_backup(BackendStore(backend_store_uri, pg_bin), location(artifacts_uri), location(dest), keep, dry_run,
                   workers)


@click.command("restore")
@click.argument("backup")
@_options
@click.option("--latest", is_flag=True, help="BACKUP is a --dest folder: restore its newest complete backup.")
@click.option("--force", is_flag=True, help="Replace a non-empty store / artifact prefix.")
def restore_command(backup, backend_store_uri, artifacts_uri, dry_run, pg_bin, workers, latest, force):
    """Verify a backup, then restore it into the (stopped) MLflow store and the artifact bucket."""
    with _s3_errors():
        run_restore(backup, latest, BackendStore(backend_store_uri, pg_bin), location(artifacts_uri), force, dry_run,
                    workers)
