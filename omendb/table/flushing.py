"""Flushing a table's memtable to a segment: on the caller's thread, or in the background.

A full memtable is *sealed*: it stops taking rows (a new memtable and a new WAL file
take over) but stays searchable, and the database's flusher thread writes it out as
a segment, then publishes a manifest whose ``wal_seq`` covers exactly the sealed
rows, then removes the WAL files that held them. Until that publish, a crash loses
nothing: the sealed WAL files are replayed on open and the unpublished segment file
is an orphan that open removes. Rows of the sealed memtable deleted or replaced
while it is being written are carried into the new segment's deletion vector.

At most one memtable is sealed at a time: a writer that fills the next one first
waits (outside the write lock) for that flush to finish. ``flush()``, ``close()``,
``compact()`` and WAL replay on open flush synchronously.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..memtable import Memtable
from ..segments import NORM_COLUMN, SegmentHandle
from ..storage.deletions import write_deletions
from ..storage.fileio import fsync_dir, remove_gradually
from ..storage.manifest import SegmentEntry
from ..storage.segment import SUFFIXES, write_segment
from ..storage.wal import WalWriter, wal_file_name
from ..errors import describe, storage_error
from .layout import SEGMENTS, WAL
from .recovery import log_files

__all__ = ["FlushMixin"]


@dataclass
class _Sealed:
    """A memtable taken out of service, on its way to becoming a segment."""

    memtable: Memtable
    seq: int                  # the last WAL record whose rows it holds
    wal_paths: list[Path]     # WAL files holding records <= seq, removed once published
    done: threading.Event = field(default_factory=threading.Event)  # published, or failed
    error: BaseException | None = None
    write_lock: threading.Lock = field(default_factory=threading.Lock)  # one writer of the segment file
    # set by _write_sealed
    written: bool = False
    live_then: np.ndarray | None = None   # memtable rows written to the segment
    handle: SegmentHandle | None = None


class FlushMixin:
    """``flush()`` and the background flush of the writable table (mixed into ``Table``)."""

    def flush(self) -> None:
        """Write the memtable out as a segment and publish a new version now."""
        self._check_writable()
        self._wait_for_sealed()
        with self._write_lock:
            self._flush_locked("flush")

    def _flush_locked(self, change: str) -> None:
        """Flush now, on this thread (caller holds the write lock)."""
        self._finish_sealed_locked()
        memtable = self._memtable
        if not (memtable.live_rows or self._dirty or len(memtable)):
            return
        sealed = self._seal()
        self._complete_sealed(sealed, change)

    def _publish_replayed(self, change: str, wal_files: list[Path]) -> None:
        """Publish the rows replayed into the memtable and every pending deletion as one
        version covering the log up to now, then remove ``wal_files`` (salvage: the old
        log is not appended to again). Caller holds the write lock; no WAL is open."""
        sealed = _Sealed(self._memtable, self._seq, list(wal_files))
        with self._lock:
            self._sealed_job = sealed
            self._memtable = Memtable(self._schema, self.id_column, self.vector_column,
                                      self._options.memtable_bytes)
        self._complete_sealed(sealed, change)

    def _flush_full_memtable(self) -> None:
        """The memtable reached ``memtable_bytes``: seal it and flush it in the background
        (caller holds the write lock). With one flush still running the memtable takes
        this write too; the next write waits for that flush first."""
        if self._sealed_job is not None:
            return
        workers = self._workers
        if workers is None or self._closing:
            self._flush_locked("flush")
            return
        sealed = self._seal()
        if not workers.flusher.submit((id(self), "flush", sealed.seq), lambda: self._flush_sealed(sealed),
                                      self._flush_failed):
            self._finish_sealed_locked()  # the flusher is shutting down: flush here

    def _seal(self) -> _Sealed:
        """Take the memtable and the WAL out of service (caller holds the write lock)."""
        wal_dir = self._dir / WAL
        old_paths = log_files(wal_dir)
        try:
            # Records of a log file that is not the last are all acknowledged: make them
            # durable before the next file exists (formats/wal.md, "torn tail or damage").
            self._wal.sync()
            new_wal = WalWriter(wal_dir / wal_file_name(self._seq + 1), fsync=self._options.fsync)
        except OSError as exc:  # nothing changed: the memtable and the log stay in service
            raise storage_error(exc, "starting a new write-ahead log file", wal_dir) from None
        sealed = _Sealed(self._memtable, self._seq, old_paths)
        with self._lock:
            self._sealed_job = sealed
            self._memtable = Memtable(self._schema, self.id_column, self.vector_column,
                                      self._options.memtable_bytes)
        self._wal.close()
        self._wal = new_wal
        return sealed

    def _flush_sealed(self, sealed: _Sealed) -> None:
        """Flusher thread: write the segment without locks, then publish under the write lock."""
        try:
            if not self._closed:
                self._write_sealed(sealed)
                published = False
                with self._write_lock:
                    # (a writer may have finished it meanwhile: see _finish_sealed_locked)
                    if self._sealed_job is sealed and not self._closed:
                        self._publish_sealed(sealed, "flush", remove_wal=False)
                        published = True
                if published:  # unlinking a 64 MiB log takes ~15 ms: not while writers wait
                    self._remove_wal_files(sealed.wal_paths)
        except BaseException as exc:
            sealed.error = exc
            raise
        finally:
            sealed.done.set()

    def _flush_failed(self, exc: BaseException) -> None:
        if not (self._closed or self._closing):
            warnings.warn(f"omendb: background flush of table {self.name!r} failed ({describe(exc)}); its rows stay "
                          "in the write-ahead log and the next write retries the flush",
                          RuntimeWarning, stacklevel=1)

    def _wait_for_sealed(self, timeout: float | None = None) -> bool:
        """Wait for a background flush in progress (never call it holding the write lock);
        False on timeout."""
        sealed = self._sealed_job
        return sealed is None or sealed.done.wait(timeout)

    def _wait_for_flush_room(self, incoming_bytes: int) -> None:
        """Before a write: when the memtable is full while the previous one is still being
        flushed, wait for that flush rather than let the memtable grow."""
        if (self._sealed_job is not None
                and self._memtable.nbytes + incoming_bytes > self._options.memtable_bytes):
            self._wait_for_sealed()

    def _finish_sealed_locked(self) -> None:
        """Complete the sealed memtable's flush on this thread (caller holds the write lock):
        it failed in the background, or is still queued or running while this thread needs
        it done. The flusher then finds nothing left to do. Raises what the flush raises."""
        sealed = self._sealed_job
        if sealed is None:
            return
        self._complete_sealed(sealed, "flush")

    def _complete_sealed(self, sealed: _Sealed, change: str) -> None:
        """Write and publish ``sealed`` on this thread (caller holds the write lock).

        On failure (a full disk, say) the sealed memtable stays in place, searchable,
        its rows safe in the WAL; ``done`` is set with the error, so nothing waits for
        it forever, and the next ``flush()`` or write retries.
        """
        try:
            self._write_sealed(sealed)
            self._publish_sealed(sealed, change)
        except BaseException as exc:
            sealed.error = exc
            sealed.done.set()
            raise
        sealed.error = None

    def _write_sealed(self, sealed: _Sealed) -> None:
        """Write the sealed memtable's live rows to a segment file (durable, not yet published)."""
        with sealed.write_lock:
            if sealed.written:
                return
            with self._lock:
                view = sealed.memtable.view()
            if view.live.any():
                rows = view.table if view.live.all() else view.table.filter(pa.array(view.live))
                rows = rows.append_column(NORM_COLUMN, pa.array(view.norms[view.live]))
                name = f"seg-{sealed.seq:010d}-{os.urandom(4).hex()}{SUFFIXES[self._format]}"
                # yield the disk to log commits only while the next memtable is under half full
                info = write_segment(self._dir / SEGMENTS, name, rows,
                                     patient=lambda: 2 * self._memtable.nbytes < self._options.memtable_bytes)
                sealed.handle = self._handle(SegmentEntry(info.file, info.rows, info.bytes, info.crc32),
                                             verified=True)
            sealed.live_then = view.live
            sealed.written = True

    def _publish_sealed(self, sealed: _Sealed, change: str, *, remove_wal: bool = True) -> None:
        """Publish the written segment and every pending deletion in one manifest version,
        then swap it in for the sealed memtable (caller holds the write lock). The sealed
        WAL files are removed too unless ``remove_wal`` is false: the caller then removes
        them (the manifest covers their records; one left by a crash goes with the next flush)."""
        version = self._manifest.version + 1
        seg_dir = self._dir / SEGMENTS
        entries: list[SegmentEntry] = []
        for handle in self._segments:
            entry = handle.entry
            if handle.file in self._dirty:
                live = self._live[handle.file]
                deleted = int(entry.rows - live.sum())
                if deleted == entry.rows:
                    continue  # every row deleted: the segment leaves the table
                entry = self._with_deletions(entry, live, version)
            entries.append(entry)
        new_handle, new_live = sealed.handle, None
        if new_handle is not None:
            with self._lock:
                live_now = sealed.memtable.view().live
            # Rows deleted or replaced since they were written: positions in the new segment.
            gone = ~live_now[sealed.live_then]
            if gone.all():
                new_handle = None
            elif gone.any():
                new_live = ~gone
                new_handle.entry = self._with_deletions(new_handle.entry, new_live, version)
            if new_handle is not None:
                entries.append(new_handle.entry)
        manifest = self._manifest.evolve(segments=tuple(entries), wal_seq=sealed.seq, next_id=self._next_id,
                                         created_at=time.time(), change=change)
        self._store.publish(manifest)
        by_file = {e.file: e for e in entries}
        with self._lock:
            handles = []
            for handle in self._segments:
                if handle.file in by_file:
                    handle.entry = by_file[handle.file]  # same data; new deletion bookkeeping
                    handles.append(handle)
            if new_handle is not None:
                handles.append(new_handle)
                self._live[new_handle.file] = new_live
            self._segments = handles
            self._live = {h.file: self._live[h.file] for h in handles}
            self._dirty = set()
            self._manifest = manifest
            self._sealed_job = None
        sealed.done.set()
        if sealed.handle is not None and new_handle is None:
            (seg_dir / sealed.handle.file).unlink(missing_ok=True)  # all its rows went meanwhile
        if remove_wal:
            self._remove_wal_files(sealed.wal_paths)
        if not self._closing:
            if new_handle is not None:
                self._schedule_index_builds()
            self._schedule_compaction()  # new segment or new deletions: the policy may apply

    def _remove_wal_files(self, paths: list[Path]) -> None:
        try:
            for path in paths:
                remove_gradually(path)  # (a log commit meanwhile never waits long for it)
            fsync_dir(self._dir / WAL)
        except FileNotFoundError:  # the table was dropped meanwhile
            pass

    def _with_deletions(self, entry: SegmentEntry, live: np.ndarray, version: int) -> SegmentEntry:
        del_name = f"{Path(entry.file).stem}.{version:010d}.del"
        write_deletions(self._dir / SEGMENTS / del_name, np.flatnonzero(~live))
        return replace(entry, deleted=int(live.size - live.sum()), deletions_file=del_name)

    def _start_new_wal(self, remove: list[Path] | tuple[Path, ...] = ()) -> None:
        """Open a new log file for the next seq and remove ``remove`` (files the manifest covers)."""
        self._wal = WalWriter(self._dir / WAL / wal_file_name(self._seq + 1), fsync=self._options.fsync)
        for path in remove:
            if path != self._wal.path:
                path.unlink(missing_ok=True)
        fsync_dir(self._dir / WAL)

