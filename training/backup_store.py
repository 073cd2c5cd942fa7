"""What ``timbral backup``/``restore`` read and write: the MLflow backend store and folders of files.

``BackendStore``: the MLflow database of a SQLAlchemy URI. PostgreSQL goes through ``pg_dump --format=custom`` /
``pg_restore``, sqlite through sqlite3's online backup API; it also counts what the store holds and tells an
empty store (as a fresh ``mlflow server`` leaves it) from a used one. A location is a folder of files under
relative keys: ``LocalLocation`` (a path or ``file://``) or ``S3Location`` (``s3://bucket/prefix``, boto3 with
``MLFLOW_S3_ENDPOINT_URL`` and ``AWS_*``) — the artifact store, a backup destination and a backup alike.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import click

COUNTED = {"experiments": "experiments", "runs": "runs", "registered_models": "registered_models",
           "model_versions": "model_versions", "aliases": "registered_model_aliases", "logged_models": "logged_models"}
FRESH_ONLY = {"alembic_version", "workspaces"}  # rows a fresh mlflow server writes, besides experiment 0


def _sa():
    import sqlalchemy  # lazily: the CLI starts fast

    return sqlalchemy


def _scalar(conn, sql: str):
    return conn.execute(_sa().text(sql)).scalar()


class BackupError(click.ClickException):
    """A backup or restore that cannot (or must not) go on; printed as one line, exit code 1."""


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


@dataclass
class BackendStore:
    uri: str
    pg_bin: str | None = None  # folder of pg_dump/pg_restore; default: PATH

    def __post_init__(self) -> None:
        try:
            self.url = _sa().engine.make_url(self.uri)
        except _sa().exc.ArgumentError:
            raise BackupError(f"not a database URI: {redact(self.uri)}") from None
        self.kind = self.url.get_backend_name()
        if self.kind not in ("postgresql", "sqlite"):
            raise BackupError(f"backend store {self.kind!r} is not supported: use PostgreSQL or sqlite")
        if self.kind == "sqlite" and not self.url.database:
            raise BackupError("an in-memory sqlite store cannot be backed up or restored")

    @property
    def dump_name(self) -> str:
        return "store.pgdump" if self.kind == "postgresql" else "store.sqlite"

    @property
    def path(self) -> Path:  # sqlite only
        return Path(self.url.database).expanduser().resolve()

    def exists(self) -> bool:
        if self.kind == "sqlite":
            return self.path.is_file()
        try:
            with self._engine().connect():
                return True
        except _sa().exc.OperationalError as exc:
            if f'database "{self.url.database}" does not exist' in str(exc):
                return False
            raise BackupError(f"cannot connect to {redact(self.uri)}: {str(exc).splitlines()[0]}") from None

    def _engine(self, **kw):
        return _sa().create_engine(kw.pop("url", self.url), poolclass=_sa().pool.NullPool, **kw)

    def counts(self, conn=None) -> dict[str, int]:
        """Rows of the tables that matter to people: experiments, runs, registered models, versions, aliases."""
        if conn is None:
            if not self.exists():
                return dict.fromkeys(COUNTED, 0)
            with self._engine().connect() as conn:
                return self.counts(conn)
        tables = set(_sa().inspect(conn).get_table_names())
        return {name: int(_scalar(conn, f'SELECT count(*) FROM "{table}"')) if table in tables else 0
                for name, table in COUNTED.items()}

    def used_tables(self) -> list[str]:
        """Tables with rows beyond what a fresh mlflow server writes (schema version, Default experiment)."""
        if not self.exists():
            return []
        with self._engine().connect() as conn:
            tables = [t for t in _sa().inspect(conn).get_table_names() if t not in FRESH_ONLY]
            where = {"experiments": " WHERE experiment_id <> 0"}
            return [t for t in tables if _scalar(conn, f'SELECT 1 FROM "{t}"{where.get(t, "")} LIMIT 1') is not None]

    def _libpq(self) -> tuple[str, dict[str, str]]:
        """A libpq URI without the password, and the environment that carries it (never on the command line)."""
        u = self.url
        bare = _sa().engine.URL.create("postgresql", username=u.username, host=u.host, port=u.port,
                                       database=u.database, query=u.query)
        env = {**os.environ, "PGCONNECT_TIMEOUT": os.environ.get("PGCONNECT_TIMEOUT", "10")}
        if u.password:
            env["PGPASSWORD"] = str(u.password)
        return bare.render_as_string(hide_password=False), env

    def tool(self, name: str) -> tuple[str, int]:
        """Path and major version of pg_dump/pg_restore."""
        binary = str(Path(self.pg_bin) / name) if self.pg_bin else shutil.which(name)
        if not binary or not Path(binary).exists():
            raise BackupError(f"{name} not found{' in ' + self.pg_bin if self.pg_bin else ' on PATH'}: install the "
                              "PostgreSQL client of the server's major version (Debian: apt-get install postgresql-client)")
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"(\d+)(?:\.\d+)?", out)
        if not match:
            raise BackupError(f"cannot read the version of {binary}: {out.strip()}")
        return binary, int(match.group(1))

    def _run(self, args: list[str], env: dict[str, str], what: str) -> None:
        proc = subprocess.run(args, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
            raise BackupError(f"{what} failed ({proc.returncode}): {' | '.join(lines)}")

    def check_can_dump(self) -> tuple[str, int, int]:
        """Fail early and clearly: no store, no pg_dump, or a pg_dump older than the server."""
        if not self.exists():
            raise BackupError(f"the backend store {redact(self.uri)} does not exist")
        if self.kind == "sqlite":
            return "", 0, 0
        binary, major = self.tool("pg_dump")
        with self._engine().connect() as conn:
            server = int(_scalar(conn, "SHOW server_version_num")) // 10000
        if major < server:
            raise BackupError(f"pg_dump {major} is older than the PostgreSQL server ({server}): install "
                              f"postgresql-client-{server} (or point --pg-bin at its bin/ folder)")
        return binary, major, server

    def dump(self, out: Path) -> dict[str, Any]:
        """Write a consistent copy of the store to ``out``; returns what the manifest should know, with the
        counts of that very copy (PostgreSQL: counted in the snapshot that pg_dump reads)."""
        binary, major, server = self.check_can_dump()
        if self.kind == "sqlite":
            src = sqlite3.connect(f"file:{urllib.parse.quote(str(self.path))}?mode=ro", uri=True)
            dst = sqlite3.connect(out)
            try:
                with dst:
                    src.backup(dst)
            finally:
                src.close()
                dst.close()
            counts = BackendStore(f"sqlite:///{out}").counts()
            return {"kind": "sqlite", "sqlite": sqlite3.sqlite_version, "counts": counts}
        uri, env = self._libpq()
        with self._engine().connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot = _scalar(conn, "SELECT pg_export_snapshot()")
                counts = self.counts(conn)
                self._run([binary, "--format=custom", f"--snapshot={snapshot}", "--file", str(out), "--dbname", uri],
                          env, "pg_dump")
        return {"kind": "postgresql", "pg_dump_major": major, "server_major": server, "counts": counts}

    def check_can_load(self, info: dict[str, Any]) -> None:
        """Refuse early (before anything is changed) when this store cannot take the dump described by ``info``."""
        if info.get("kind") != self.kind:
            raise BackupError(f"the backup holds a {info.get('kind')} store; the target is {self.kind}")
        if self.kind == "postgresql":
            _, major = self.tool("pg_restore")
            if major < int(info.get("pg_dump_major", 0)):
                raise BackupError(f"pg_restore {major} cannot read a dump of pg_dump {info['pg_dump_major']}: "
                                  f"install postgresql-client-{info['pg_dump_major']}")

    def load(self, dump: Path) -> None:
        """Replace the store's content with ``dump`` (the caller has checked emptiness or --force)."""
        if self.kind == "sqlite":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".restoring")
            shutil.copyfile(dump, tmp)
            for stale in ("-journal", "-wal", "-shm"):  # would be replayed onto the restored file
                self.path.with_name(self.path.name + stale).unlink(missing_ok=True)
            os.replace(tmp, self.path)
            return
        if not self.exists():
            self._create_database()
        binary, _ = self.tool("pg_restore")
        uri, env = self._libpq()
        self._run([binary, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
                   "--exit-on-error", "--dbname", uri, str(dump)], env, "pg_restore")

    def _create_database(self) -> None:
        name = str(self.url.database).replace('"', '""')
        with self._engine(url=self.url.set(database="postgres"), isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(_sa().text(f'CREATE DATABASE "{name}"'))


def location(uri: str) -> LocalLocation | S3Location:
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise BackupError(f"no bucket in {uri}")
        return S3Location(bucket, prefix.strip("/"))
    if uri.startswith("file://"):
        return LocalLocation(Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)))
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        raise BackupError(f"unsupported location {redact(uri)}: use a folder, file:///path or s3://bucket/prefix")
    return LocalLocation(Path(uri).expanduser())


def safe_key(key: str) -> str:
    """A relative key that maps to exactly one file below a folder (no '..', no absolute paths, no '//')."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or str(path) != key or any(p in ("..", ".") for p in path.parts):
        raise BackupError(f"object key {key!r} cannot be stored as a file")
    return key


@dataclass
class LocalLocation:
    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def child(self, name: str) -> LocalLocation:
        return LocalLocation(self.root / safe_key(name))

    def path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def files(self):
        """(key, size) of every file below, sorted by key."""
        paths = sorted(self.root.rglob("*")) if self.root.is_dir() else []
        yield from ((p.relative_to(self.root).as_posix(), p.stat().st_size) for p in paths if p.is_file())

    def folders(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def download(self, key: str, dest: Path) -> None:
        shutil.copyfile(self.path(key), dest)

    def upload(self, key: str, src: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)

    def delete_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)


@dataclass
class S3Location:
    bucket: str
    prefix: str = ""
    _client: Any = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def s3(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self._key(name.strip("/")), self._client)

    def _pages(self, **kw):
        """list_objects_v2 pages under the prefix ("prefix/..."); none when the bucket does not exist."""
        start = f"{self.prefix}/" if self.prefix else ""
        try:
            yield from self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start, **kw)
        except self.s3.exceptions.NoSuchBucket:
            return

    def files(self):
        start = len(f"{self.prefix}/") if self.prefix else 0
        yield from ((o["Key"][start:], int(o["Size"])) for page in self._pages() for o in page.get("Contents", []))

    def folders(self) -> list[str]:
        start = len(f"{self.prefix}/") if self.prefix else 0
        return sorted(p["Prefix"][start:].rstrip("/") for page in self._pages(Delimiter="/")
                      for p in page.get("CommonPrefixes", []))

    def exists(self, key: str) -> bool:
        page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key), MaxKeys=1) if self._bucket() else {}
        return any(o["Key"] == self._key(key) for o in page.get("Contents", []))

    def _bucket(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise

    def download(self, key: str, dest: Path) -> None:
        self.s3.download_file(self.bucket, self._key(key), str(dest))

    def upload(self, key: str, src: Path) -> None:
        self.s3.upload_file(str(src), self.bucket, self._key(key))

    def delete_all(self) -> None:
        keys = [self._key(k) for k, _ in self.files()]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

    def ensure(self) -> None:
        if not self._bucket():
            region = self.s3.meta.region_name
            extra = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            self.s3.create_bucket(Bucket=self.bucket, **extra)
