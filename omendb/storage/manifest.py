"""Manifests: the versioned, atomically published description of a table.

Spec: ``formats/manifest.md``. Version ``N`` lives in ``manifests/v{N:010d}.json``;
the newest file is the table's current state. A manifest is never rewritten: a new
version is a new file published with temp-file, fsync, rename, fsync-dir.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import CorruptFileError, FormatVersionError, VersionNotFoundError, storage_error
from .checksum import crc32
from .fileio import atomic_write

__all__ = ["SegmentEntry", "Manifest", "ManifestStore", "FORMAT_VERSION"]

#: The newest manifest format: 2 adds text indexes (``table.text_index``, the segments'
#: ``text_*`` fields) and embedding functions (``table.embedding``). A manifest without
#: them is written as version 1, which omendb releases before them read; one with them
#: as 2, which they refuse by name.
FORMAT_VERSION = 2
_READS = (1, 2)
_NAME = re.compile(r"^v(\d{10})\.json$")


@dataclass(frozen=True)
class SegmentEntry:
    """One segment as a manifest version sees it."""

    file: str
    rows: int
    bytes: int
    crc32: int
    deleted: int = 0
    deletions_file: str | None = None
    index_file: str | None = None      # the segment's HNSW graph, when built
    index_bytes: int = 0
    index_crc32: int = 0
    index_params: dict[str, Any] | None = None  # build parameters of that graph
    index_calibration: list[list[float]] | None = None  # [[ef, recall@10], ...] measured at build
    text_file: str | None = None       # the segment's full-text postings, when built
    text_bytes: int = 0
    text_crc32: int = 0
    text_params: dict[str, Any] | None = None  # the text index config they were built with

    def files(self) -> list[str]:
        """The files of the segment folder this entry references."""
        return [f for f in (self.file, self.deletions_file, self.index_file, self.text_file) if f]

    def to_dict(self) -> dict[str, Any]:
        """As a manifest stores it (the text fields only once the segment has a text index,
        so tables without one keep the manifests they always had)."""
        body = asdict(self)
        if self.text_file is None and self.text_params is None:
            for name in _TEXT_FIELDS:
                del body[name]
        return body


_TEXT_FIELDS = ("text_file", "text_bytes", "text_crc32", "text_params")


@dataclass(frozen=True)
class Manifest:
    """One published version of a table."""

    version: int
    table: dict[str, Any]          # schema and options; see formats/manifest.md
    segments: tuple[SegmentEntry, ...] = ()
    wal_seq: int = 0               # every WAL record up to this seq is in the segments
    next_id: int = 0               # next auto-assigned int64 primary key
    created_at: float = 0.0
    change: str = "create"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = asdict(self)
        body["segments"] = [s.to_dict() for s in self.segments]
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        newer = ("text_index" in self.table or "embedding" in self.table
                 or any(s.text_file or s.text_params for s in self.segments))
        envelope = {"format": "omendb.manifest", "format_version": FORMAT_VERSION if newer else 1,
                    "crc32": crc32(text.encode()), "body": body}
        return json.dumps(envelope, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> "Manifest":
        try:
            envelope = json.loads(data)
            if envelope.get("format") != "omendb.manifest":
                raise CorruptFileError(f"{path}: not an omendb manifest")
            version = envelope.get("format_version")
            if version not in _READS:
                raise FormatVersionError(
                    f"{path}: manifest format version {version} is not supported "
                    f"(this omendb reads versions {', '.join(map(str, _READS))})")
            body = envelope["body"]
            text = json.dumps(body, sort_keys=True, separators=(",", ":"))
            if crc32(text.encode()) != envelope["crc32"]:
                raise CorruptFileError(f"{path}: manifest checksum mismatch")
            body["segments"] = tuple(SegmentEntry(**s) for s in body["segments"])
            return cls(**body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptFileError(f"{path}: manifest cannot be parsed: {exc}") from exc

    def evolve(self, **changes: Any) -> "Manifest":
        """A copy with the next version number and the given fields changed."""
        return replace(self, version=self.version + 1, **changes)


class ManifestStore:
    """Reads and publishes the manifest versions of one table directory.

    ``publish_first``: for a table in an object store, publishes a version there (its
    files, then the manifest, conditionally) before it is written here.
    """

    def __init__(self, directory: str | os.PathLike,
                 publish_first: Callable[["Manifest"], None] | None = None) -> None:
        self.directory = Path(directory)
        self._publish_first = publish_first

    def versions(self) -> list[int]:
        """Every published version number, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p) for p in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m)

    def path_of(self, version: int) -> Path:
        return self.directory / f"v{version:010d}.json"

    def load(self, version: int) -> Manifest:
        path = self.path_of(version)
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # never published, or removed by cleanup()
            raise VersionNotFoundError(f"{path}: manifest version {version} does not exist") from None
        except IsADirectoryError:
            raise CorruptFileError(f"{path}: is a directory, not a manifest") from None
        except OSError as exc:
            raise storage_error(exc, "reading a manifest", path) from None
        manifest = Manifest.from_json(data, path)
        if manifest.version != version:
            raise CorruptFileError(f"{path}: holds version {manifest.version}, not {version}")
        return manifest

    def latest(self) -> Manifest | None:
        versions = self.versions()
        return self.load(versions[-1]) if versions else None

    def publish(self, manifest: Manifest) -> None:
        """Atomically write a new version; refuses to overwrite an existing one."""
        path = self.path_of(manifest.version)
        if path.exists():
            raise CorruptFileError(f"{path}: manifest version {manifest.version} already exists")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._publish_first is not None:
            self._publish_first(manifest)
        atomic_write(path, manifest.to_json())
