"""Folders of files under relative keys, for ``timbral backup``/``restore``: the artifact store, a backup
destination and a backup alike. ``LocalLocation`` is a path or ``file://`` URI; ``S3Location`` is
``s3://bucket/prefix`` through boto3 (``MLFLOW_S3_ENDPOINT_URL`` and ``AWS_*`` from the environment).
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from training.backup_store import BackupError, redact


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
