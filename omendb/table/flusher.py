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
``compact()`` and WAL replay on open flush synchronously. A flush that fails (a full
disk) leaves the sealed memtable in place and its rows in the log; the next flush or
write retries it, and nothing waits for it forever.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from ..errors import CommitConflictError, describe, storage_error
from ..storage.fileio import fsync_dir, remove_gradually
from ..storage.layout import SEGMENTS, WAL, segment_file_name
from ..storage.manifest import SegmentEntry
from ..storage.segment import write_segment
from ..storage.wal import WalWriter, wal_file_name
from .recovery import log_files
from .segments import NORM_COLUMN, with_deletions
from .state import Deletions, SealedMemtable, TableCore
from .workers import Workers
from .writer import WriteLog

__all__ = ["Flusher"]


class Flusher:
    """Turns memtables into segments and publishes them.

    ``after_publish(new_segment)`` runs after each publish (index builds and compaction
    are scheduled there).
    """

    def __init__(self, core: TableCore, log: WriteLog, workers: Workers | None,
                 after_publish: Callable[[bool], None]) -> None:
        self._core = core
        self._log = log
        self._workers = workers
        self._after_publish = after_publish

    def flush(self) -> None:
        """Write the memtable out as a segment and publish a new version now."""
        self.wait_for_sealed()
        with self._core.write_lock:
            self._core.check_open()
            self.flush_locked("flush")

    def flush_for_close(self) -> None:
        """The last flush of a closing table (caller holds the write lock). A writer that
        another took over (an object store's table) has nothing to flush: every write it
        acknowledged is in the store, and the new writer has it."""
        try:
            self.flush_locked("close")
        except CommitConflictError:
            pass

    def flush_locked(self, change: str) -> None:
        """Flush now, on this thread (caller holds the write lock)."""
        self.finish_sealed_locked()
        state = self._core.state
        if not (state.memtable.live_rows or state.dirty or len(state.memtable)):
            return
        self._complete(self._seal(), change)

    def flush_full(self) -> None:
        """The memtable reached ``memtable_bytes``: seal it and flush it in the background
        (caller holds the write lock). With one flush still running the memtable takes
        this write too; the next write waits for that flush first."""
        core = self._core
        if core.state.sealed is not None:
            return
        if self._workers is None or core.closing:
            self.flush_locked("flush")
            return
        sealed = self._seal()
        if not self._workers.flusher.submit((id(core), "flush", sealed.seq), lambda: self._flush_sealed(sealed),
                                            self._flush_failed):
            self.finish_sealed_locked()  # the flusher is shutting down: flush here

    def publish_replayed(self, change: str, wal_files: list[Path]) -> None:
        """Publish the rows replayed into the memtable and every pending deletion as one
        version covering the log up to now, then remove ``wal_files`` (salvage: the old
        log is not appended to again). Caller holds the write lock; no WAL is open."""
        core = self._core
        sealed = SealedMemtable(core.state.memtable, self._log.seq, list(wal_files))
        with core.changing():
            core.swap(sealed=sealed, memtable=core.new_memtable())
        self._complete(sealed, change)

    def _seal(self) -> SealedMemtable:
        """Take the memtable and the WAL out of service (caller holds the write lock)."""
        core, log = self._core, self._log
        wal_dir = core.directory / WAL
        next_name = wal_file_name(log.seq + 1)
        if log.wal.path.name == next_name:
            # The open log file holds no record yet (a file started by a seal that a crash
            # kept from publishing, reused on open): the sealed rows are all in older files,
            # and this one simply goes on taking the next records.
            sealed = SealedMemtable(core.state.memtable, log.seq,
                                    [p for p in log_files(wal_dir) if p.name != next_name])
        else:
            try:
                # Records of a log file that is not the last are all acknowledged: make them
                # durable before the next file exists (formats/wal.md, "torn tail or damage").
                log.wal.sync()
                new_wal = WalWriter(wal_dir / next_name, fsync=log.fsync)
            except OSError as exc:  # nothing changed: the memtable and the log stay in service
                raise storage_error(exc, "starting a new write-ahead log file", wal_dir) from None
            sealed = SealedMemtable(core.state.memtable, log.seq, [p for p in log_files(wal_dir)
                                                                   if p.name != next_name])
            log.wal.close()
            log.wal = new_wal
        with core.changing():
            core.swap(sealed=sealed, memtable=core.new_memtable())
        return sealed

    def _flush_sealed(self, sealed: SealedMemtable) -> None:
        """Flusher thread: write the segment without locks, then publish under the write lock."""
        core = self._core
        try:
            if not core.closed:
                self._write(sealed)
                published = False
                with core.write_lock:
                    # (a writer may have finished it meanwhile: see finish_sealed_locked)
                    if core.state.sealed is sealed and not core.closed:
                        self._publish(sealed, "flush", remove_wal=False)
                        published = True
                if published:  # unlinking a 64 MiB log takes ~15 ms: not while writers wait
                    self._remove_wal_files(sealed.wal_paths)
        except BaseException as exc:
            sealed.error = exc
            raise
        finally:
            sealed.done.set()

    def _flush_failed(self, exc: BaseException) -> None:
        if not self._core.stopping:
            warnings.warn(f"omendb: background flush of table {self._core.name!r} failed ({describe(exc)}); its rows "
                          "stay in the write-ahead log and the next write retries the flush",
                          RuntimeWarning, stacklevel=1)

    def wait_for_sealed(self, timeout: float | None = None) -> bool:
        """Wait for a background flush in progress (never call it holding the write lock);
        False on timeout."""
        sealed = self._core.state.sealed
        return sealed is None or sealed.done.wait(timeout)

    def wait_for_room(self, incoming_bytes: int) -> None:
        """Before a write: when the memtable is full while the previous one is still being
        flushed, wait for that flush rather than let the memtable grow."""
        state = self._core.state
        if state.sealed is not None and state.memtable.nbytes + incoming_bytes > self._core.options.memtable_bytes:
            self.wait_for_sealed()

    def finish_sealed_locked(self) -> None:
        """Complete the sealed memtable's flush on this thread (caller holds the write lock):
        it failed in the background, or is still queued or running while this thread needs
        it done. The flusher then finds nothing left to do. Raises what the flush raises."""
        sealed = self._core.state.sealed
        if sealed is not None:
            self._complete(sealed, "flush")

    def _complete(self, sealed: SealedMemtable, change: str) -> None:
        """Write and publish ``sealed`` on this thread (caller holds the write lock).

        On failure (a full disk, say) the sealed memtable stays in place, searchable,
        its rows safe in the WAL; ``done`` is set with the error, so nothing waits for
        it forever, and the next ``flush()`` or write retries.
        """
        try:
            self._write(sealed)
            self._publish(sealed, change)
        except BaseException as exc:
            sealed.error = exc
            sealed.done.set()
            raise
        sealed.error = None

    def _write(self, sealed: SealedMemtable) -> None:
        """Write the sealed memtable's rows live as of its last record (rows a later record
        deleted included: the version this flush publishes still holds them) to a segment
        file (durable, not yet published)."""
        core = self._core
        with sealed.write_lock:
            if sealed.written:
                return
            with core.changing():
                view = sealed.memtable.view()
                live = sealed.memtable.live_as_of(sealed.seq)
            if live.any():
                rows = view.table if live.all() else view.table.filter(pa.array(live))
                rows = rows.append_column(NORM_COLUMN, pa.array(view.norms[live]))
                name = segment_file_name(sealed.seq, core.state.info.format)
                # yield the disk to log commits only while the next memtable is under half full
                info = write_segment(core.directory / SEGMENTS, name, rows,
                                     patient=lambda: 2 * core.state.memtable.nbytes < core.options.memtable_bytes)
                handle = core.new_handle(SegmentEntry(info.file, info.rows, info.bytes, info.crc32), verified=True)
                if live.all() and info.rows >= core.state.info.index.min_rows:
                    # same rows at the same positions: the memtable's graph serves the segment
                    with core.changing():
                        handle.provisional = sealed.memtable.graph
                        sealed.memtable.segment = handle
                sealed.handle = handle
            sealed.rows_written = np.flatnonzero(live)
            sealed.written = True

    def _publish(self, sealed: SealedMemtable, change: str, *, remove_wal: bool = True) -> None:
        """Publish the written segment and every pending deletion in one manifest version
        (caller holds the write lock). The sealed WAL files are removed too unless
        ``remove_wal`` is false: the caller then removes them (the manifest covers their
        records; one left by a crash goes with the next flush)."""
        core = self._core
        state = core.state
        version = state.version + 1
        seg_dir = core.directory / SEGMENTS
        entries: list[SegmentEntry] = []
        deletions: dict[str, Deletions] = {}
        for handle in state.segments:
            entry = handle.entry
            before = state.deletions[handle.file]
            after = before.as_of(sealed.seq)  # the deletions of records up to the sealed ones
            if after is not before:
                if not after.published.any() and not after.pending:
                    continue  # every row deleted: the segment leaves the table
                entry = with_deletions(seg_dir, entry, after.published, version)
                deletions[handle.file] = after
            entries.append(entry)
        new_handle = sealed.handle
        if new_handle is not None:
            with core.changing():
                live_now = sealed.memtable.view().live
                later = sealed.memtable.deletions_after(sealed.seq)
            # Rows of the segment a later record deleted: pending, by record, at their new positions.
            position = {row: i for i, row in enumerate(sealed.rows_written.tolist())}
            by_seq: dict[int, list[int]] = {}
            for row, at in later:
                if row in position:
                    by_seq.setdefault(at, []).append(position[row])
            live = live_now[sealed.rows_written]
            pending = tuple((at, np.asarray(sorted(rows), np.int64)) for at, rows in sorted(by_seq.items()))
            deletions[new_handle.file] = Deletions(None if live.all() else live, None, pending)
            entries.append(new_handle.entry)
        core.publish(change, entries, new={} if new_handle is None else {new_handle.file: new_handle},
                     deletions=deletions, sealed_done=True, wal_seq=sealed.seq, next_id=self._log.next_id)
        sealed.done.set()
        if remove_wal:
            self._remove_wal_files(sealed.wal_paths)
        if not core.closing:
            self._after_publish(new_handle is not None)

    def _remove_wal_files(self, paths: list[Path]) -> None:
        live = None if self._log.wal is None else self._log.wal.path
        try:
            for path in paths:
                if path != live:  # (never the file taking writes)
                    remove_gradually(path)  # (a log commit meanwhile never waits long for it)
            fsync_dir(self._core.directory / WAL)
        except FileNotFoundError:  # the table was dropped meanwhile
            pass

    def start_new_wal(self, remove: list[Path] | tuple[Path, ...] = ()) -> None:
        """Open a new log file for the next seq and remove ``remove`` (files the manifest covers)."""
        wal_dir = self._core.directory / WAL
        log = self._log
        log.wal = WalWriter(wal_dir / wal_file_name(log.seq + 1), fsync=log.fsync)
        for path in remove:
            if path != log.wal.path:
                path.unlink(missing_ok=True)
        fsync_dir(wal_dir)
