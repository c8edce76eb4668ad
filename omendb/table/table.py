"""``Table``: the writable table of a database, a reader's view of it, or an old version.

Write path: validate -> WAL record (fsynced) -> apply to the memtable (and deletion
masks) -> when the memtable is large, flush it to a segment and publish a manifest.
Read path: take a snapshot (segments + masks + memtable view) under a short lock,
then search it without holding any lock. Background work (index builds,
compaction) runs on the database's worker threads and publishes new versions.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SchemaError
from ..locking import WriterLock
from ..storage.manifest import Manifest
from ..storage.wal import WalWriter, read_wal
from .compaction import CompactionMixin
from .flushing import FlushMixin
from .indexing import IndexMixin
from .layout import LOCK, WAL, TableOptions
from .reader import TableReader
from .registry import register
from .versions import VersionsMixin
from .writer import WriteMixin

if TYPE_CHECKING:
    from ..worker import Workers

__all__ = ["Table"]


class Table(VersionsMixin, CompactionMixin, IndexMixin, FlushMixin, WriteMixin, TableReader):
    """One table of a database. Obtain it from ``Database.create_table``/``open_table``.

    In a database opened ``read_only`` (reader processes) the table sees the newest
    published version, refreshing itself before each read; ``checkout(v)`` returns a
    table fixed at version ``v``. Both refuse writes with ``ReadOnlyError``.
    """

    def __init__(self, name: str, directory: Path, options: TableOptions, workers: Workers | None, *,
                 checkout: Manifest | None = None) -> None:
        self._init_reader(name, directory, options)
        self._workers = workers
        self._write_lock = threading.RLock()
        self._compact_lock = threading.Lock()
        self._index_cond = threading.Condition()
        self._index_errors: dict[str, BaseException] = {}
        self._closing = False
        self._log_failure: str | None = None  # why writes stopped (a failed log sync)
        self._writer_lock: WriterLock | None = None
        self._checkout_version = None if checkout is None else checkout.version
        self._read_only = checkout is not None or options.read_only
        self._read_only_reason = (f"a checkout of version {checkout.version}" if checkout is not None
                                  else "the database was opened read_only=True")
        if checkout is not None:
            self._load_manifest(checkout)
        elif options.read_only:
            self._manifest_mtime = self._manifests_mtime()
            self._listed_at = time.monotonic()
            self._load_manifest(self._latest_manifest())
        else:
            self._writer_lock = WriterLock(self._dir / LOCK, name, options.lock_timeout)
            try:
                self._open_for_writing()
            except BaseException:
                self._writer_lock.release()
                raise
        register(self)

    def _latest_manifest(self) -> Manifest:
        manifest = self._store.latest()
        if manifest is None:
            raise SchemaError(f"{self._dir}: table {self.name!r} has no manifest")
        return manifest

    def _open_for_writing(self) -> None:
        manifest = self._latest_manifest()
        self._load_manifest(manifest)
        self._dirty: set[str] = set()
        self._next_id = manifest.next_id
        self._seq = manifest.wal_seq
        (self._dir / WAL).mkdir(exist_ok=True)
        wal_files = sorted((self._dir / WAL).glob("*.wal"))
        for path in wal_files:
            for record in read_wal(path):
                if record.seq <= manifest.wal_seq:
                    continue
                self._apply(record.kind, record.payload)
                self._seq = record.seq
        self._remove_orphans()
        if wal_files and self._seq > manifest.wal_seq:
            self._wal = WalWriter(wal_files[-1], fsync=self._options.fsync)
            if self._memtable.nbytes >= self._options.memtable_bytes:
                self._flush_locked("flush")
        else:
            self._start_new_wal(remove=wal_files)
        self._schedule_index_builds()
        self._schedule_compaction()

    def _follows_latest(self) -> bool:
        return self._read_only and self._checkout_version is None

    def _before_read(self) -> None:
        super()._before_read()
        if self._read_only and self._checkout_version is None:
            # A new manifest changes the folder's mtime; a coarse-timestamp filesystem can
            # hide two publishes in one tick, so also look at the listing once a second.
            now = time.monotonic()
            if self._manifests_mtime() != self._manifest_mtime or now - self._listed_at > 1.0:
                self._listed_at = now
                self.refresh()

    def close(self) -> None:
        """Flush the memtable (writer) and release the table's files and writer lock."""
        if self._closed:
            return
        if self._read_only:
            self._closed = True
            return
        self._closing = True  # cancels this table's index build or merge in progress
        self._wait_for_sealed()
        with self._write_lock:
            try:
                self._flush_locked("close")
            finally:
                self._closed = True
                self._wal.close()
                self._writer_lock.release()
