"""An S3-compatible object store: the few requests omendb makes of one, with clear errors.

Every request names its object as ``s3://bucket/key`` when it fails. Requests that are
safe to repeat (all of them here: uploads go to fresh names or are conditional, and a
conditional one that finds its own bytes already there counts as done) are retried by
botocore's *standard* mode, with exponential backoff on throttling, 5xx answers,
timeouts and refused connections. boto3 is imported only when a store is opened.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import InvalidArgumentError, MissingDependencyError, ObjectStoreError

__all__ = ["ObjectStore", "StoreLocation", "parse_store_uri", "is_store_uri", "STORAGE_OPTIONS"]

#: ``storage_options`` accepted, by what they set; each has the names fsspec/s3fs,
#: pyarrow's ``S3FileSystem`` and boto3 give it.
STORAGE_OPTIONS = {
    "endpoint_url": ("endpoint_url", "endpoint_override", "endpoint"),
    "region_name": ("region_name", "region"),
    "aws_access_key_id": ("aws_access_key_id", "key", "access_key"),
    "aws_secret_access_key": ("aws_secret_access_key", "secret", "secret_key"),
    "aws_session_token": ("aws_session_token", "token", "session_token"),
    "connect_timeout": ("connect_timeout",),
    "read_timeout": ("read_timeout", "request_timeout"),
    "max_attempts": ("max_attempts", "retries"),
    "anon": ("anon", "anonymous"),
}
_ALIASES = {alias: name for name, aliases in STORAGE_OPTIONS.items() for alias in aliases}
_SCHEMES = ("s3://", "s3a://")


def is_store_uri(path: Any) -> bool:
    """True for ``s3://bucket/prefix`` (and ``s3a://``)."""
    return isinstance(path, str) and path.lower().startswith(_SCHEMES)


@dataclass(frozen=True)
class StoreLocation:
    """``s3://bucket/prefix``: where a database lives in a store."""

    bucket: str
    prefix: str  # no leading or trailing "/"; may be empty

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


def parse_store_uri(uri: str) -> StoreLocation:
    """Split ``s3://bucket/prefix``; refuses URIs without a bucket or with empty path parts."""
    rest = uri.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise InvalidArgumentError(f"{uri!r}: an object-store database is s3://bucket/prefix "
                                   "(a bucket, then an optional path without empty, '.' or '..' parts)")
    return StoreLocation(bucket, prefix)


def _client_settings(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidArgumentError(f"storage_options must be a dict, got {type(options).__name__}")
    settings: dict[str, Any] = {}
    for given, value in options.items():
        name = _ALIASES.get(given)
        if name is None:
            raise InvalidArgumentError(f"storage_options: unknown option {given!r}; known: "
                                       f"{', '.join(sorted(_ALIASES))}")
        settings[name] = value
    for name in ("connect_timeout", "read_timeout"):
        if name in settings and (isinstance(settings[name], bool) or not isinstance(settings[name], (int, float))
                                 or not 0 < settings[name] <= 3600):
            raise InvalidArgumentError(f"storage_options: {name} must be seconds in (0, 3600], "
                                       f"got {settings[name]!r}")
    if "max_attempts" in settings and (isinstance(settings["max_attempts"], bool)
                                       or not isinstance(settings["max_attempts"], int)
                                       or not 1 <= settings["max_attempts"] <= 20):
        raise InvalidArgumentError(f"storage_options: max_attempts must be an integer in [1, 20], "
                                   f"got {settings['max_attempts']!r}")
    return settings


class ObjectStore:
    """One bucket of an S3-compatible store. Thread-safe (boto3 clients are)."""

    def __init__(self, location: StoreLocation, storage_options: Mapping[str, Any] | None = None) -> None:
        settings = _client_settings(storage_options)
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError:
            raise MissingDependencyError("s3:// databases need boto3: pip install 'omendb[s3]'") from None
        self.location = location
        self.bucket = location.bucket
        self._botocore = botocore.exceptions
        endpoint = (settings.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        if endpoint:
            settings["endpoint_url"] = endpoint
        config = botocore.config.Config(
            connect_timeout=settings.pop("connect_timeout", 5), read_timeout=settings.pop("read_timeout", 30),
            retries={"mode": "standard", "max_attempts": settings.pop("max_attempts", 5)},
            signature_version=botocore.UNSIGNED if settings.pop("anon", False) else None,
            s3={"addressing_style": "path"} if settings.get("endpoint_url") else None)
        settings.setdefault("region_name", os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                            or "us-east-1")
        self._client = boto3.session.Session().client("s3", config=config, **settings)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # ---------------------------------------------------------------- errors
    def _error(self, exc: Exception, doing: str, key: str | None) -> ObjectStoreError:
        where = self.uri(key) if key is not None else f"s3://{self.bucket}"
        code, status = self._code(exc)
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                    "InvalidToken") or status == 403:
            why = f"the store refused the credentials ({code or status})"
        elif code == "NoSuchBucket":
            why = f"bucket {self.bucket!r} does not exist"
        elif isinstance(exc, (self._botocore.EndpointConnectionError, self._botocore.ConnectTimeoutError)):
            why = f"the store is unreachable ({exc})"
        elif isinstance(exc, self._botocore.ReadTimeoutError):
            why = f"the store did not answer in time ({exc})"
        elif isinstance(exc, self._botocore.NoCredentialsError):
            why = "no credentials: pass storage_options={'key': ..., 'secret': ...} or set AWS_ACCESS_KEY_ID"
        else:
            why = str(exc)
        error = ObjectStoreError(f"{where}: {doing} failed: {why}")
        error.filename = where
        return error

    def _code(self, exc: Exception) -> tuple[str | None, int | None]:
        if isinstance(exc, self._botocore.ClientError):
            return exc.response.get("Error", {}).get("Code"), exc.response.get("ResponseMetadata", {}).get(
                "HTTPStatusCode")
        return None, None

    def _failures(self) -> tuple[type[Exception], ...]:
        return (self._botocore.BotoCoreError, self._botocore.ClientError)

    # -------------------------------------------------------------- requests
    def get(self, key: str, *, missing_ok: bool = False) -> bytes | None:
        """An object's bytes (None when it is missing and ``missing_ok``)."""
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self._failures() as exc:
            code, status = self._code(exc)
            if missing_ok and (code in ("NoSuchKey", "404") or status == 404):
                return None
            raise self._error(exc, "reading an object", key) from None

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Write an object. ``if_absent``: only if the key is free (``If-None-Match: *``);
        returns False when another object holds it, True when it was written (or the
        same bytes were already there: a retried request whose first try landed)."""
        try:
            if if_absent:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
            else:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
            return True
        except self._failures() as exc:
            code, status = self._code(exc)
            if if_absent and (code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)):
                return self.get(key, missing_ok=True) == data
            raise self._error(exc, "writing an object", key) from None

    def upload(self, key: str, path: str | os.PathLike) -> None:
        """Upload a file (multipart for large ones: a partial upload is never visible)."""
        try:
            self._client.upload_file(str(path), self.bucket, key)
        except self._failures() as exc:
            raise self._error(exc, f"uploading {path}", key) from None
        except OSError as exc:
            raise self._error(exc, f"uploading {path}", key) from None

    def download(self, key: str, path: str | os.PathLike) -> int:
        """Download an object to ``path`` (atomically: a temporary name, then a rename);
        returns its size. A missing object raises :class:`MissingObject`."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            self._client.download_file(self.bucket, key, str(tmp))
            os.replace(tmp, path)
            return path.stat().st_size
        except self._failures() as exc:
            code, status = self._code(exc)
            if code in ("NoSuchKey", "404") or status == 404:
                raise MissingObject(self.uri(key)) from None
            raise self._error(exc, "downloading an object", key) from None
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str, *, start_after: str | None = None) -> list[tuple[str, int]]:
        """``(key, size)`` of every object under ``prefix``, in key order."""
        return [(key, size) for key, size, _ in self.list_with_etags(prefix, start_after=start_after)]

    def list_with_etags(self, prefix: str, *, start_after: str | None = None) -> list[tuple[str, int, str]]:
        """``(key, size, etag)`` of every object under ``prefix``; the ETag of an object
        written in one request is the MD5 of its bytes."""
        out: list[tuple[str, int, str]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(**kwargs):
                out.extend((item["Key"], item["Size"], item.get("ETag", "").strip('"'))
                           for item in page.get("Contents", ()))
        except self._failures() as exc:
            raise self._error(exc, "listing objects", prefix) from None
        return out

    def list_dirs(self, prefix: str) -> list[str]:
        """The names one level below ``prefix/`` (its "folders")."""
        base = prefix.rstrip("/") + "/" if prefix else ""
        names: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base,
                                                                           Delimiter="/")
            for page in pages:
                names.extend(p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", ()))
        except self._failures() as exc:
            raise self._error(exc, "listing objects", base) from None
        return names

    def delete(self, keys: list[str]) -> None:
        """Remove objects (missing ones are not an error)."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            try:
                answer = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except self._failures() as exc:
                raise self._error(exc, "removing objects", batch[0]["Key"]) from None
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise ObjectStoreError(f"{self.uri(first['Key'])}: removing an object failed: {first.get('Message')}")

    def check_bucket(self) -> None:
        """Fail now, clearly, when the bucket cannot be reached or read."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except self._failures() as exc:
            code, status = self._code(exc)
            if status == 404:
                raise ObjectStoreError(f"s3://{self.bucket}: bucket {self.bucket!r} does not exist") from None
            raise self._error(exc, "opening the bucket", None) from None


class MissingObject(Exception):
    """An object the caller expected is not in the store (callers turn it into their error)."""
