"""A table in an object store, and the local folder that works on it.

Spec: ``formats/objectstore.md``. The store holds the truth; a local folder (the
cache) holds a working copy the rest of omendb reads and writes as a local table:

* every acknowledged write is one object, ``wal/<epoch>/<seq>.wal`` (a WAL file of one
  record), written with ``If-None-Match: *`` before ``add``/``upsert``/``delete`` return;
* a version is published by uploading the files it names, then its manifest with
  ``If-None-Match: *``: two writers can never both publish version N;
* a writer session first claims the next *epoch* and *seals* the epochs before it (an
  empty object at the sequence number their writer would write next), so a writer that
  lost the table can never again acknowledge a write: its next record's key is taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from ..errors import (CommitConflictError, InvalidArgumentError, MissingFileError, NotADatabaseError,
                      ObjectStoreError, TableExistsError)
from .fileio import atomic_write
from .layout import MANIFESTS, SEGMENTS, WAL
from .manifest import Manifest
from .objectstore import MissingObject, ObjectStore, parse_store_uri
from .wal import wal_file_name

__all__ = ["TableMirror", "DatabaseRoot"]

_MANIFEST_KEY = re.compile(r"v(\d{10})\.json")
_RECORD_KEY = re.compile(r"(\d{10})/(\d{20})\.wal")
#: The database's marker object, as a local database folder's marker file.
MARKER_NAME = "omendb.json"
#: Attempts at a step that loses races with another writer (sealing, pulling) before giving up.
RACE_ATTEMPTS = 20


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


class DatabaseRoot:
    """A database's place in a store: the store, the key prefix of its tables, and how
    its readers cache (``cache_bytes``: the most a reader keeps beyond the files of the
    version it reads; ``poll_interval``: seconds between its looks for a new version)."""

    def __init__(self, store: ObjectStore, prefix: str, *, cache_bytes: int | None = None,
                 poll_interval: float = 5.0) -> None:
        self.store, self.prefix = store, prefix
        self.cache_bytes, self.poll_interval = cache_bytes, poll_interval
        self.local_path: Path | None = None  # the folder tables are worked on in (set by open())

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    @property
    def uri(self) -> str:
        return self.store.uri(self.prefix) if self.prefix else f"s3://{self.store.bucket}"

    def table(self, name: str) -> "TableMirror":
        return TableMirror(self.store, self.key(name), name, cache_bytes=self.cache_bytes,
                           poll_interval=self.poll_interval)

    @classmethod
    def open(cls, uri: str, *, storage_options: Mapping[str, Any] | None, cache_dir: str | os.PathLike | None,
             cache_bytes: int | None, poll_interval: float, read_only: bool, marker: bytes) -> "DatabaseRoot":
        """Reach the database at ``uri`` (checking the bucket and its marker object; a
        writer creates the marker) and choose its local folder: ``cache_dir``, by
        default ``$OMENDB_CACHE_DIR`` or ``~/.cache/omendb``, then a hash of the URI;
        in it ``writer`` or ``reader``."""
        location = parse_store_uri(uri)
        for name, value, low in (("cache_bytes", cache_bytes, 0), ("poll_interval", poll_interval, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < low):
                raise InvalidArgumentError(f"{name} must be a number >= {low}, got {value!r}")
        store = ObjectStore(location, storage_options)
        store.check_bucket()
        root = cls(store, location.prefix, cache_bytes=cache_bytes, poll_interval=float(poll_interval))
        marker_key = root.key(MARKER_NAME)
        found = store.get(marker_key, missing_ok=True)
        if found is None and read_only:
            raise NotADatabaseError(f"{location.uri}: no omendb database here to open read-only "
                                    f"(no {MARKER_NAME})")
        if found is None and not store.put(marker_key, marker, if_absent=True):
            found = store.get(marker_key)
        if found is not None and found != marker:
            raise NotADatabaseError(f"{store.uri(marker_key)}: not this omendb's database marker "
                                    f"(this omendb writes {marker.decode()!r})")
        if cache_dir is None:
            cache_root = Path(os.environ.get("OMENDB_CACHE_DIR") or Path.home() / ".cache" / "omendb")
            cache_dir = cache_root / hashlib.sha256(location.uri.encode()).hexdigest()[:16]
        base = Path(cache_dir)
        root.local_path = base / ("reader" if read_only else "writer")
        return root

    def table_names(self) -> list[str]:
        """Tables with at least one published manifest."""
        return sorted(name for name in self.store.list_dirs(self.prefix)
                      if self.store.list(self.key(name, MANIFESTS) + "/"))


class TableMirror:
    """One table's objects: its log records, manifests and segment files."""

    def __init__(self, store: ObjectStore, prefix: str, name: str, *, cache_bytes: int | None = None,
                 poll_interval: float = 5.0) -> None:
        self.store, self.prefix, self.name = store, prefix, name
        self.cache_bytes, self.poll_interval = cache_bytes, poll_interval
        self.epoch: int | None = None  # claimed by take_over() (writers only)
        self.fenced: str | None = None  # why this writer may commit no more
        self._uploaded: set[str] = set()  # segment-folder files known to be in the store

    # ----------------------------------------------------------------- keys
    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def _manifest_key(self, version: int) -> str:
        return self._key(MANIFESTS, f"v{version:010d}.json")

    def _record_key(self, epoch: int, seq: int) -> str:
        return self._key(WAL, f"{epoch:010d}", wal_file_name(seq))

    @property
    def uri(self) -> str:
        return self.store.uri(self.prefix)

    # ------------------------------------------------------------ manifests
    def versions(self) -> list[int]:
        return sorted(self._manifest_etags())

    def _manifest_etags(self) -> dict[int, str]:
        base = self._key(MANIFESTS) + "/"
        out = {}
        for key, _, etag in self.store.list_with_etags(base):
            match = _MANIFEST_KEY.fullmatch(key[len(base):])
            if match:
                out[int(match.group(1))] = etag
        return out

    def load(self, version: int) -> Manifest:
        data = self.store.get(self._manifest_key(version), missing_ok=True)
        if data is None:
            raise MissingFileError(f"{self.store.uri(self._manifest_key(version))}: manifest is missing")
        return Manifest.from_json(data, Path(self.store.uri(self._manifest_key(version))))

    def create(self, manifest: Manifest) -> None:
        """Publish a new table's first version; :class:`TableExistsError` if another did."""
        if not self.store.put(self._manifest_key(manifest.version), manifest.to_json(), if_absent=True):
            raise TableExistsError(f"table {self.name!r} already exists in {self.store.uri(self.prefix)}")

    def publish(self, manifest: Manifest, segments_dir: Path) -> None:
        """Upload the files ``manifest`` names that the store lacks, then the manifest itself,
        conditionally: :class:`CommitConflictError` if another writer published that version."""
        self._check_not_fenced()
        if self.epoch is not None and max(self._epochs(), default=0) > self.epoch:
            self._fence(f"another writer took table {self.name!r} over")
        for entry in manifest.segments:
            for name in entry.files():
                if name not in self._uploaded:
                    self.store.upload(self._key(SEGMENTS, name), segments_dir / name)
                    self._uploaded.add(name)
        if not self.store.put(self._manifest_key(manifest.version), manifest.to_json(), if_absent=True):
            self._fence(f"another writer published version {manifest.version} of table {self.name!r} first")
        self.forget_log(manifest.wal_seq)

    # ------------------------------------------------------------------ log
    def take_over(self) -> None:
        """Become the table's writer: claim the next epoch, seal every earlier one."""
        epoch = self._claim_epoch()
        for _ in range(RACE_ATTEMPTS):
            claimed = self._epochs()
            records, sealed = self._log_objects()
            last = max([seq for per in records.values() for seq in per] + [self._latest_wal_seq()])
            if all(self.store.put(self._record_key(e, last + 1), b"", if_absent=True)
                   for e in claimed if e < epoch and e not in sealed):
                break
            # an earlier writer committed record last + 1 meanwhile: look again
        else:
            raise CommitConflictError(f"table {self.name!r} at {self.uri}: the previous writer kept committing "
                                      f"while this one took over ({RACE_ATTEMPTS} attempts); try again")
        newer = [e for e in self._epochs() if e > epoch]
        if newer:
            raise CommitConflictError(f"table {self.name!r} at {self.uri}: another writer opened it meanwhile "
                                      f"(writer epoch {newer[-1]}); this one takes no writes")
        self.epoch = epoch

    def log_record(self, seq: int, body: bytes) -> None:
        """Store one acknowledged write (a WAL file of one record); conditional on the key."""
        self._check_not_fenced()
        assert self.epoch is not None, "take_over() first"
        if not self.store.put(self._record_key(self.epoch, seq), body, if_absent=True):
            self._fence(f"another writer took table {self.name!r} over (record {seq} of this writer's epoch "
                        f"{self.epoch} is sealed)")

    def forget_log(self, upto: int) -> None:
        """Remove the records a published version covers (``seq <= upto``), keeping each
        epoch's newest: a writer taking over seals above it."""
        records, _ = self._log_objects()
        doomed = [self._record_key(epoch, seq) for epoch, seqs in records.items()
                  for seq in sorted(seqs)[:-1] if seq <= upto]
        if doomed:
            self.store.delete(doomed)

    # ----------------------------------------------------------------- pull
    def copy_to(self, directory: Path, *, writer: bool = False, checkout: Manifest | None = None) -> None:
        """Make ``directory`` the copy a table opens: a writer's (it takes the table over
        and copies the log too), a reader's, or the files of the ``checkout`` version."""
        if checkout is not None:
            self.fetch(checkout, directory / SEGMENTS)
            return
        if writer:
            self.take_over()
        self.pull(directory, log=writer)

    def pull(self, directory: Path, *, log: bool) -> Manifest:
        """Make ``directory`` the store's table: its manifests, the newest version's files
        and (``log``: a writer opening) every record after that version, as WAL files.
        Files already there are kept (their names are never reused). Returns the newest
        manifest."""
        for _ in range(RACE_ATTEMPTS):
            try:
                return self._pull_once(directory, log=log)
            except MissingObject:
                continue  # the writer published and cleaned up meanwhile: look again
        raise ObjectStoreError(f"{self.uri}: the table kept changing while it was read "
                               f"({RACE_ATTEMPTS} attempts); try again")

    def _pull_once(self, directory: Path, *, log: bool) -> Manifest:
        manifests_dir, segments_dir, wal_dir = directory / MANIFESTS, directory / SEGMENTS, directory / WAL
        for folder in (manifests_dir, segments_dir, wal_dir):
            folder.mkdir(parents=True, exist_ok=True)
        etags = self._manifest_etags()
        versions = sorted(etags)
        if not versions:
            raise MissingObject(self._key(MANIFESTS))
        local = {int(m.group(1)) for m in map(_MANIFEST_KEY.fullmatch, os.listdir(manifests_dir)) if m}
        # (a copy of another table of this name, dropped since, is told apart by its bytes)
        local = {v for v in local if v not in etags or _md5(manifests_dir / f"v{v:010d}.json") == etags[v]}
        for version in sorted(set(versions) - local):
            data = self.store.get(self._manifest_key(version), missing_ok=True)
            if data is None:
                raise MissingObject(self._manifest_key(version))
            atomic_write(manifests_dir / f"v{version:010d}.json", data)
        for version in local - set(versions):  # removed by the writer's cleanup()
            (manifests_dir / f"v{version:010d}.json").unlink(missing_ok=True)
        latest = Manifest.from_json((manifests_dir / f"v{versions[-1]:010d}.json").read_bytes(),
                                    manifests_dir / f"v{versions[-1]:010d}.json")
        self.fetch(latest, segments_dir)
        if log:
            self._pull_log(latest, wal_dir)
        return latest

    def fetch(self, manifest: Manifest, segments_dir: Path) -> int:
        """Download the files of ``manifest`` missing from ``segments_dir``; bytes fetched."""
        fetched = 0
        for entry in manifest.segments:
            for name in entry.files():
                if not (segments_dir / name).exists():
                    fetched += self.store.download(self._key(SEGMENTS, name), segments_dir / name)
                self._uploaded.add(name)
        return fetched

    def _pull_log(self, manifest: Manifest, wal_dir: Path) -> None:
        for name in os.listdir(wal_dir):  # the store's log is the log: a local record it lacks was never acknowledged
            (wal_dir / name).unlink()
        records, _ = self._log_objects()
        wanted = sorted((seq, epoch) for epoch, seqs in records.items() for seq in seqs if seq > manifest.wal_seq)
        expected = manifest.wal_seq + 1
        for seq, epoch in wanted:
            if seq != expected:  # records it covers were removed meanwhile: a newer version exists
                raise MissingObject(self._record_key(epoch, expected))
            data = self.store.get(self._record_key(epoch, seq), missing_ok=True)
            if data is None:
                raise MissingObject(self._record_key(epoch, seq))
            atomic_write(wal_dir / wal_file_name(seq), data)
            expected += 1

    def drop(self) -> None:
        """Remove every object of the table, its manifests first (it is gone once they are)."""
        self.store.delete([key for key, _ in self.store.list(self._key(MANIFESTS) + "/")])
        self.store.delete([key for key, _ in self.store.list(self.prefix + "/")])

    # ------------------------------------------------------------- cleanup
    def remove(self, versions: list[int], files: set[str]) -> None:
        """Remove old versions' manifests, then the files only they referenced."""
        self.store.delete([self._manifest_key(v) for v in versions])
        self.store.delete([self._key(SEGMENTS, name) for name in sorted(files)])
        self._uploaded -= files

    def trim_cache(self, segments_dir: Path, in_use: set[str]) -> int:
        """Remove the least recently fetched files not ``in_use`` until the folder holds
        at most ``cache_bytes`` (files in use are never removed); bytes removed."""
        if self.cache_bytes is None:
            return 0
        files = []
        for entry in os.scandir(segments_dir):
            if entry.is_file() and not entry.name.startswith("."):
                stat = entry.stat()
                files.append((entry.name not in in_use, stat.st_mtime, entry.name, stat.st_size))
        total = sum(size for *_, size in files)
        removed = 0
        for evictable, _, name, size in sorted(files, key=lambda f: (not f[0], f[1])):
            if total <= self.cache_bytes or not evictable:
                break
            (segments_dir / name).unlink(missing_ok=True)  # (a mapped file stays readable)
            total -= size
            removed += size
        return removed

    # -------------------------------------------------------------- helpers
    def _claim_epoch(self) -> int:
        token = json.dumps({"writer": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                            "at": time.time()}).encode()
        for _ in range(RACE_ATTEMPTS):
            epoch = max(self._epochs(), default=0) + 1
            if self.store.put(self._key("epochs", f"{epoch:010d}"), token, if_absent=True):
                return epoch
        raise CommitConflictError(f"table {self.name!r} at {self.uri}: other writers kept opening it; try again")

    def _epochs(self) -> list[int]:
        base = self._key("epochs") + "/"
        return sorted(int(key[len(base):]) for key, _ in self.store.list(base) if key[len(base):].isdigit())

    def _log_objects(self) -> tuple[dict[int, list[int]], set[int]]:
        """Records (``{epoch: [seq, ...]}``) and the sealed epochs."""
        base = self._key(WAL) + "/"
        records: dict[int, list[int]] = {}
        sealed: set[int] = set()
        for key, size in self.store.list(base):
            match = _RECORD_KEY.fullmatch(key[len(base):])
            if match is None:
                continue
            epoch, seq = int(match.group(1)), int(match.group(2))
            if size == 0:
                sealed.add(epoch)
            else:
                records.setdefault(epoch, []).append(seq)
        return records, sealed

    def _latest_wal_seq(self) -> int:
        versions = self.versions()
        return self.load(versions[-1]).wal_seq if versions else 0

    def _fence(self, why: str) -> None:
        self.fenced = why
        raise CommitConflictError(f"{why}: this change was not acknowledged and this writer takes no more "
                                  "writes; reopen the database to continue from the store's state")

    def _check_not_fenced(self) -> None:
        if self.fenced is not None:
            raise CommitConflictError(f"{self.fenced}: this writer takes no more writes; reopen the database")
