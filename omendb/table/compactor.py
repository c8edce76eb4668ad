"""Compaction: grow segments up to a cap and drop deleted rows, racing safely with writes.

Segments below ``CompactionPolicy.max_rows`` join the largest of them (the base), so a
table settles into a few capped segments plus one growing one; the base's graph grows
by the rows that join it rather than being built again, and its rows are copied a
bounded number of times (a merge waits until the rows to join reach half its size). A
merge reads its sources as of a snapshot, writes the merged segment (vectors gathered
into file-backed scratch space, not memory) and its index without holding the
table's locks, then, under the write lock, carries every delete made meanwhile into
the merged segment and publishes it with one manifest swap. While a background
compaction is queued or running, the index builder leaves the segments its plan will
merge alone: their rows get the merged segment's graph (a graph built for them first
would be thrown away). When the compaction ends, for whatever reason, the builder is
told to look again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..errors import ClosedError, describe, storage_error
from ..index.hnsw import BuildCancelled, HnswIndex, extend_hnsw
from ..index.text import Postings
from ..storage.layout import SEGMENTS, merged_segment_file_name
from ..storage.manifest import SegmentEntry
from ..storage.segment import write_segment
from .indexer import build_index, build_text_index, grow_index
from .segments import NORM_COLUMN, SegmentHandle, with_deletions
from .state import Deletions, TableCore
from .workers import Workers

__all__ = ["Compactor"]


class Compactor:
    """``compact()`` and the background compaction of a writable table.

    ``flush`` is the table's (compact first flushes); ``after_publish`` runs after each
    merge is published (index builds are scheduled there).
    """

    def __init__(self, core: TableCore, workers: Workers | None, flush: Callable[[], None],
                 after_publish: Callable[[], None] = lambda: None) -> None:
        self._core = core
        self._workers = workers
        self._flush = flush
        self._after_publish = after_publish
        self._lock = threading.Lock()  # one merge plan at a time
        self._jobs_lock = threading.Lock()
        self._jobs = 0  # background compactions queued or running
        self._last_failed = False

    def compact(self) -> dict[str, Any]:
        """Flush, then merge segments and drop deleted rows now (see ``Table.compact``)."""
        core = self._core
        with self._lock:
            with core.changing() as state:
                rows_of = {h.file: h.entry.rows for h in state.segments}
                before = len(rows_of) + (1 if any(m.live_rows for m in state.memtables()) else 0)
            self._flush()  # also drops segments whose rows are all deleted
            remaining = {h.file for h in core.state.segments}
            dropped = sum(rows for file, rows in rows_of.items() if file not in remaining)
            try:
                dropped += sum(self._merge(group) for group in self._plan(force=True))
            except BuildCancelled:
                core.check_open()
                raise ClosedError(f"table {core.name!r} closed while compact() ran; the merge was not "
                                  "published") from None
        state = core.state
        return {"segments_before": before, "segments_after": len(state.segments), "rows_dropped": dropped,
                "version": state.version}

    def schedule(self) -> None:
        core = self._core
        if self._workers is None or not core.options.compaction.enabled or core.closed:
            return
        with self._jobs_lock:
            if self._workers.compactor.submit((id(core), "compact"), self._compact_auto, self._failed,
                                              self._job_ended):
                self._jobs += 1

    def will_merge(self, segment_file: str) -> bool:
        """True while a background compaction is queued or running whose plan (as of the
        current state) merges ``segment_file``: its graph would be thrown away, so the
        index builder need not build it. False after a background compaction failed."""
        with self._jobs_lock:
            if not self._jobs or self._last_failed:
                return False
        return any(segment_file in group for group in self._plan(force=False))

    def _compact_auto(self) -> None:
        with self._lock:
            # Merging can make a new plan (a merged segment joins the next group, or segments
            # flushed meanwhile are due): plan again until nothing is left, a bounded number of times.
            for _ in range(_MAX_ROUNDS):
                groups = self._plan(force=False)
                if not groups:
                    break
                for group in groups:
                    if self._core.stopping:
                        return
                    self._merge(group)
        self._last_failed = False

    def _job_ended(self) -> None:
        with self._jobs_lock:
            self._jobs -= 1
        if not self._core.closed:
            self._after_publish()  # segments left to this compaction but not merged get their graphs

    def _merge(self, files: list[str]) -> int:
        """Merge ``files`` (see :meth:`_merge_now`), the index builder leaving them alone meanwhile."""
        core = self._core
        core.merging = frozenset(files)
        try:
            return self._merge_now(files)
        finally:
            core.merging = frozenset()
            if not core.closed and set(files) & {h.file for h in core.state.segments}:
                self._after_publish()  # not merged after all: the graphs skipped meanwhile are built now

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, BuildCancelled) or self._core.stopping:
            return  # stopped on purpose (the table closed, the interpreter exits): nothing failed
        self._last_failed = True  # until one succeeds, every segment gets its own graph
        warnings.warn(f"omendb: background compaction of table {self._core.name!r} failed ({describe(exc)}); its "
                      "segments are unchanged and the next flush retries", RuntimeWarning, stacklevel=1)

    def _plan(self, *, force: bool) -> list[list[str]]:
        """Groups of segment files to merge (see ``CompactionPolicy``); a group's first file
        is its base, the segment the others join."""
        policy = self._core.options.compaction
        state = self._core.state
        sizes = []
        for handle in state.segments:
            live = state.deletions[handle.file].live
            dead = 0 if live is None else int(handle.entry.rows - live.sum())
            sizes.append((handle.file, handle.entry.rows, dead))
        dirty = [f for f, rows, dead in sizes if dead and (force or dead > policy.max_deleted_fraction * rows)]
        live_rows = {f: rows - dead for f, rows, dead in sizes}
        # Segments below the cap can still grow, largest first: each group's base.
        growing = sorted((f for f in live_rows if live_rows[f] < policy.max_rows), key=lambda f: -live_rows[f])
        if not force and len(growing) >= 2:
            base, rest = live_rows[growing[0]], sum(live_rows[f] for f in growing[1:])
            waiting = len(growing)
            # merge at once while the base is small (each segment costs a search a graph walk);
            # later when the rows waiting to join it reach half its size (so a row is copied a
            # bounded number of times), or when too many segments wait
            if not (base < policy.small_rows or (waiting >= policy.min_segments and rest >= base / 2)
                    or waiting >= 2 * policy.min_segments):
                growing = []
        elif not force:
            growing = []
        groups: list[list[str]] = []
        current: list[str] = []
        rows_in_current = 0
        for file in growing:
            if current and rows_in_current + live_rows[file] > policy.max_rows:
                groups.append(current)
                current, rows_in_current = [], 0
            current.append(file)
            rows_in_current += live_rows[file]
        if current:
            groups.append(current)
        grouped = {f for g in groups if len(g) > 1 for f in g}
        return [g for g in groups if len(g) > 1] + [[f] for f in dirty if f not in grouped]

    def _merge_now(self, files: list[str]) -> int:
        """Merge ``files`` (base first) into one segment and publish; returns the deleted rows dropped.

        The merged segment holds the rows live in the published version (rows only a
        later record deleted stay, marked pending, as the version needs them). When the
        base has a current graph and few deleted rows, its rows keep their positions, its
        deleted ones included, and its graph grows by the other rows instead of being
        built again.
        """
        core = self._core
        state = core.state
        handles = {h.file: h for h in state.segments}
        if any(f not in handles for f in files):
            return 0
        sources = [handles[f] for f in files]
        policy = core.options.compaction
        config = state.info.index
        base = sources[0]
        base_deletions = state.deletions[base.file]
        base_dead = 0 if base_deletions.published is None else int(base.entry.rows - base_deletions.published.sum())
        grow = (len(sources) > 1 and core.options.build_indexes and base.entry.index_file is not None
                and base.file not in core.bad_indexes and base.entry.index_params == config.build_params()
                and base_dead <= policy.max_deleted_fraction * base.entry.rows)
        kept_rows: dict[str, tuple[np.ndarray, int]] = {}
        offset = 0
        for i, handle in enumerate(sources):
            published = state.deletions[handle.file].published
            if published is None or (i == 0 and grow):
                kept = np.arange(handle.entry.rows)
            else:
                kept = np.flatnonzero(published)
            kept_rows[handle.file] = (kept, offset)
            offset += kept.size
        dropped = sum(h.entry.rows for h in sources) - offset
        seg_dir = core.directory / SEGMENTS
        written: list[Path] = []
        new_entry = new_handle = index = postings = None
        try:
            if offset:
                name = merged_segment_file_name(state.info.format)
                info = self._write_merged(sources, kept_rows, offset, name, written)
                new_entry = SegmentEntry(info.file, info.rows, info.bytes, info.crc32)
                new_handle = core.new_handle(new_entry, verified=True)
                new_entry, index = self._index_merged(new_handle, base if grow else None, written)
                new_entry, postings = self._text_index_merged(new_handle, new_entry, written)
            with core.write_lock:
                state = core.state
                if core.closed or any(h.file not in {s.file for s in state.segments} for h in sources):
                    raise _Abandoned()
                deletions = self._merged_deletions(sources, kept_rows, offset, state)
                if new_entry is not None and deletions.published is not None:
                    new_entry = with_deletions(seg_dir, new_entry, deletions.published, state.version + 1)
                    written.append(seg_dir / new_entry.deletions_file)
                entries, placed = [], False
                for entry in state.manifest.segments:
                    if entry.file in files:
                        if not placed and new_entry is not None:
                            entries.append(new_entry)
                        placed = True
                    else:
                        entries.append(entry)
                core.publish("compact", entries, new={} if new_entry is None else {new_entry.file: new_handle},
                             deletions={} if new_entry is None else {new_entry.file: deletions},
                             indexes={} if index is None else {new_entry.file: index},
                             texts={} if postings is None else {new_entry.file: postings})
            self._after_publish()  # (parameters changed meanwhile: the merged segment needs a rebuild)
        except _Abandoned:
            for path in written:
                path.unlink(missing_ok=True)
            return 0
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return dropped

    def _write_merged(self, sources: list[SegmentHandle], kept_rows: dict[str, tuple[np.ndarray, int]],
                      total: int, name: str, written: list[Path]) -> Any:
        """Write the merged segment. Its vectors and norms are gathered into scratch files
        first (file-backed pages, not the process's own memory, whatever the segment's
        size); only the metadata columns are assembled in memory."""
        core = self._core
        info = core.state.info
        seg_dir = core.directory / SEGMENTS
        scratch = [seg_dir / f".{name}.tmp-1", seg_dir / f".{name}.tmp-2"]
        try:
            vectors = _scratch(scratch[0], (total, info.dim))
            norms = _scratch(scratch[1], (total,))
            metadata = []
            for handle in sources:
                kept, start = kept_rows[handle.file]
                for step in range(0, kept.size, _GATHER_ROWS):
                    rows = kept[step:step + _GATHER_ROWS]
                    vectors[start + step:start + step + rows.size] = handle.vectors[rows]
                    norms[start + step:start + step + rows.size] = handle.norms[rows]
                table = handle.table.drop_columns([info.vector_column])
                metadata.append(table if kept.size == handle.entry.rows else table.take(pa.array(kept)))
            columns = pa.concat_tables(metadata)
            vector_array = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), info.dim)
            merged = columns.add_column(info.schema.get_field_index(info.vector_column),
                                        info.schema.field(info.vector_column), pa.chunked_array([vector_array]))
            merged = merged.select(info.schema.names).cast(info.schema)
            merged = merged.append_column(NORM_COLUMN, pa.chunked_array([pa.array(norms)]))
            result = write_segment(seg_dir, name, merged)
            written.append(seg_dir / result.file)
            return result
        finally:
            for path in scratch:  # (its pages were only ever scratch: nothing to sync)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _index_merged(self, handle: SegmentHandle, base: SegmentHandle | None,
                      written: list[Path]) -> tuple[SegmentEntry, HnswIndex | None]:
        """The merged segment's index, made before publishing so searches never lose one:
        ``base``'s graph grown by the rows after its own, or a new graph."""
        core = self._core
        config = core.state.info.index
        if not core.options.build_indexes or handle.entry.rows < config.min_rows:
            return handle.entry, None
        if base is None:
            entry, index = build_index(core, handle, config)
        else:
            entry = base.entry
            index = extend_hnsw(core.directory / SEGMENTS / entry.index_file, metric=core.state.info.metric,
                                size=entry.index_bytes, crc32=entry.index_crc32, rows=entry.rows)
            entry, index = grow_index(core, handle, config, index, earlier_curve=entry.index_calibration)
        written.append(core.directory / SEGMENTS / entry.index_file)
        return entry, index

    def _text_index_merged(self, handle: SegmentHandle, entry: SegmentEntry,
                           written: list[Path]) -> tuple[SegmentEntry, Postings | None]:
        """The merged segment's text index (when the table has one), made before publishing
        so text searches never lose one."""
        core = self._core
        config = core.state.info.text
        if config is None or not core.options.build_indexes:
            return entry, None
        fields, postings = build_text_index(core, handle, config)
        written.append(core.directory / SEGMENTS / fields["text_file"])
        return replace(entry, **fields), postings

    def _merged_deletions(self, sources: list[SegmentHandle], kept_rows: dict[str, tuple[np.ndarray, int]],
                          total: int, state: Any) -> Deletions:
        """The merged segment's deletions, from its sources' as they are now (under the
        write lock): rows the published version deletes, and deletions still pending."""
        published = np.ones(total, dtype=bool)
        pending: list[tuple[int, np.ndarray]] = []
        for handle in sources:
            kept, start = kept_rows[handle.file]
            now = state.deletions[handle.file]
            if now.published is not None:
                published[start + np.flatnonzero(~now.published[kept])] = False
            for seq, positions in now.pending:
                slot = np.searchsorted(kept, positions)
                inside = slot < kept.size
                inside[inside] = kept[slot[inside]] == positions[inside]
                pending.append((seq, start + slot[inside]))
        pending.sort(key=lambda item: item[0])
        live = published.copy()
        for _, positions in pending:
            live[positions] = False
        return Deletions(None if live.all() else live, None if published.all() else published, tuple(pending))


#: Plans one background compaction carries out at most before it yields to the queue.
_MAX_ROUNDS = 8

#: Rows gathered per copy step of a merge (bounds the temporary memory of a step).
_GATHER_ROWS = 16_384


def _scratch(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` backed by a new file at ``path``, its blocks reserved
    first: a mapped page the disk has no room for would kill the process (SIGBUS) where
    a reservation fails with a clear ``DiskFullError``. Where the filesystem cannot
    reserve space, an array in memory."""
    nbytes = int(np.prod(shape)) * 4
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise storage_error(exc, "making scratch space for a merge", path) from None
    try:
        if nbytes:
            os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            path.unlink(missing_ok=True)
            return np.empty(shape, np.float32)
        path.unlink(missing_ok=True)
        raise storage_error(exc, "making scratch space for a merge", path) from None
    os.close(fd)
    return np.memmap(path, np.float32, "r+", shape=shape) if nbytes else np.empty(shape, np.float32)


class _Abandoned(Exception):
    """The sources changed under a merge (closed table, segment dropped): discard it."""
