"""Throwaway servers for tests: each on a free loopback port, with its own data, stopped afterwards."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from training.local_stack import free_port, stop_process


@dataclass
class RedisServer:
    """A ``redis-server`` process of our own (never the machine's 6379). ``stop()``/``start()`` for faults."""

    workdir: Path
    port: int = 0
    password: str | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; `make setup` installs it (apt-get install redis-server)")
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=(self.workdir / "redis.log").open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def postgres_available(host: str = "127.0.0.1", port: int = 5432) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class PostgresDatabase:
    """A database of our own on the local PostgreSQL (trust auth), dropped afterwards."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5432, user: str = "postgres") -> None:
        self.host, self.port, self.user = host, port, user
        self.name = f"timbral_test_{uuid.uuid4().hex[:10]}"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"

    def _admin(self):
        import sqlalchemy

        return sqlalchemy.create_engine(
            f"postgresql://{self.user}@{self.host}:{self.port}/postgres", isolation_level="AUTOCOMMIT"
        )

    def create(self) -> PostgresDatabase:
        import sqlalchemy

        engine = self._admin()
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{self.name}"'))
        engine.dispose()
        return self

    def drop(self) -> None:
        import sqlalchemy

        engine = self._admin()
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        engine.dispose()
