"""What ``timbral backup``/``restore`` read and write: the MLflow backend store and folders of files.

``BackendStore``: the MLflow database of a SQLAlchemy URI. PostgreSQL goes through ``pg_dump --format=custom`` /
``pg_restore``, sqlite through sqlite3's online backup API; it also counts what the store holds and tells an
empty store (as a fresh ``mlflow server`` leaves it) from a used one. Locations (folders of files, local or
S3) are in ``training.backup_locations``.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
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
