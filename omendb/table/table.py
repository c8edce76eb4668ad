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

from ..errors import MissingVersionError, SchemaError
from ..locking import WriterLock
from ..storage.manifest import Manifest
from ..storage.wal import WalWriter
from .compaction import CompactionMixin
from .flushing import FlushMixin
from .indexing import IndexMixin
from .layout import LOCK, WAL, TableOptions
from .reader import TableReader
from .recovery import check_no_missing_versions, log_files, read_log, remove_orphans, salvage_log
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
                 checkout: Manifest | None = None, salvage: bool = False, owner: object = None) -> None:
        self._init_reader(name, directory, options)
        # The database that opened the table: while the table is in use, its database stays
        # alive, and so does the close-at-exit that flushes it and stops its background work.
        self._owner = owner
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
            self._load_manifest(self._latest_complete_manifest())
        else:
            self._writer_lock = WriterLock(self._dir / LOCK, name, options.lock_timeout)
            try:
                self._open_for_writing(salvage)
            except BaseException:
                self._writer_lock.release()
                raise
        register(self)

    def _latest_manifest(self) -> Manifest:
        manifest = self._store.latest()
        if manifest is None:
            raise SchemaError(f"{self._dir}: table {self.name!r} has no manifest")
        return manifest

    def _latest_complete_manifest(self) -> Manifest:
        """A reader's newest manifest, refused when a newer one must have existed.

        The log is listed before the manifests: a writer publishes a version before it
        removes the log files it covers, so a reader never sees a gap that is not there.
        A second look settles a publish that raced with the first.
        """
        hint = f"`omendb salvage --db {self._dir.parent} --table {self.name}` (in the writer's place)"
        for attempt in (1, 2):
            wal_files = log_files(self._dir / WAL)
            manifest = self._latest_manifest()
            try:
                check_no_missing_versions(self._dir, manifest, wal_files, salvage_hint=hint)
                return manifest
            except MissingVersionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _open_for_writing(self, salvage: bool = False) -> None:
        wal_dir = self._dir / WAL
        wal_dir.mkdir(exist_ok=True)
        wal_files = log_files(wal_dir)  # (listed before the manifests: see _latest_complete_manifest)
        manifest = self._latest_manifest()
        hint = f"`omendb salvage --db {self._dir.parent} --table {self.name}`"
        salvaged = None
        if salvage:
            salvaged = salvage_log(self._dir, manifest)
            records = salvaged.records
        else:
            check_no_missing_versions(self._dir, manifest, wal_files, salvage_hint=hint)
            records = read_log(wal_files, manifest, salvage_hint=hint)
        self._load_manifest(manifest)
        self._dirty: set[str] = set()
        self._next_id = manifest.next_id
        self._seq = manifest.wal_seq
        for record in records:
            self._apply(record.kind, record.payload)
            self._seq = record.seq
        remove_orphans(self._dir)
        if salvaged is not None:
            # Publish everything kept, then retire the old log (its copies are in the salvage folder).
            self._publish_replayed("salvage", wal_files)
            self._start_new_wal()
            self.salvage_report = {"table": self.name, "records_kept": len(records), "rows_kept": salvaged.rows_kept,
                                   "lost": salvaged.lost, "copies": str(salvaged.folder), "version": self.version}
        elif wal_files and self._seq > manifest.wal_seq:
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

    @property
    def closed(self) -> bool:
        """True once the table (or its database) has been closed."""
        return self._closed

    def _close_for_drop(self) -> WriterLock:
        """Stop using the table's files without flushing them (they are being dropped).

        Background work is cancelled and a flush in progress finishes first, so nothing
        writes into the folder afterwards. Returns the writer lock, still held: the
        caller releases it once the folder is gone.
        """
        self._closing = True
        self._wait_for_sealed()
        with self._write_lock:
            self._closed = True
            self._wal.close()
        lock, self._writer_lock = self._writer_lock, None
        return lock

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
