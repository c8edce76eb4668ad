"""Compaction: merge small segments and drop deleted rows, racing safely with writes.

A merge reads its source segments as of a snapshot, writes the merged segment (and
its HNSW index) without holding the table's locks, then, under the write lock,
re-applies every delete that happened meanwhile (including the deletes half of
upserts) to the merged segment and publishes it with one manifest swap.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..errors import describe
from ..index.hnsw import BuildCancelled, HnswIndex
from ..storage.layout import SEGMENTS, merged_segment_file_name
from ..storage.manifest import SegmentEntry
from ..storage.segment import write_segment
from .indexer import build_index
from .segments import NORM_COLUMN, SegmentHandle, with_deletions
from .state import TableCore
from .workers import Workers

__all__ = ["Compactor"]


class Compactor:
    """``compact()`` and the background compaction of a writable table.

    ``flush()`` is the table's (compact first flushes), ``indexes`` says whether merged
    segments get their graph before they are published.
    """

    def __init__(self, core: TableCore, workers: Workers | None, flush: Callable[[], None]) -> None:
        self._core = core
        self._workers = workers
        self._flush = flush
        self._lock = threading.Lock()  # one merge plan at a time

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
            dropped += sum(self._merge(group) for group in self._plan(force=True))
        state = core.state
        return {"segments_before": before, "segments_after": len(state.segments), "rows_dropped": dropped,
                "version": state.version}

    def schedule(self) -> None:
        core = self._core
        if self._workers is None or not core.options.compaction.enabled or core.closed:
            return
        self._workers.compactor.submit((id(core), "compact"), self._compact_auto, self._failed)

    def _compact_auto(self) -> None:
        with self._lock:
            for group in self._plan(force=False):
                if self._core.stopping:
                    return
                self._merge(group)

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, BuildCancelled) or self._core.stopping:
            return  # stopped on purpose (the table closed, the interpreter exits): nothing failed
        warnings.warn(f"omendb: background compaction of table {self._core.name!r} failed ({describe(exc)}); its "
                      "segments are unchanged and the next flush retries", RuntimeWarning, stacklevel=1)

    def _plan(self, *, force: bool) -> list[list[str]]:
        """Groups of segment files to merge, oldest first (see ``CompactionPolicy``)."""
        policy = self._core.options.compaction
        state = self._core.state
        sizes = [(h.file, h.entry.rows,
                  0 if state.live[h.file] is None else int(h.entry.rows - state.live[h.file].sum()))
                 for h in state.segments]
        dirty = {f for f, rows, dead in sizes if dead and (force or dead > policy.max_deleted_fraction * rows)}
        if force:
            candidates = [(f, rows - dead) for f, rows, dead in sizes]
        else:
            small = [f for f, rows, _ in sizes if rows < policy.small_rows]
            merge_small = set(small) if len(small) >= policy.min_segments else set()
            candidates = [(f, rows - dead) for f, rows, dead in sizes if f in merge_small or f in dirty]
        groups: list[list[str]] = []
        current: list[str] = []
        rows_in_current = 0
        for file, live_rows in candidates:
            if current and rows_in_current + live_rows > policy.max_rows:
                groups.append(current)
                current, rows_in_current = [], 0
            current.append(file)
            rows_in_current += live_rows
        if current:
            groups.append(current)
        return [g for g in groups if len(g) > 1 or g[0] in dirty]

    def _merge(self, files: list[str]) -> int:
        """Merge ``files`` into one segment and publish; returns the deleted rows dropped."""
        core = self._core
        state = core.state
        sources = [h for h in state.segments if h.file in files]
        live_then = {h.file: state.live[h.file] for h in sources}
        if len(sources) != len(files):
            return 0
        schema = state.info.schema
        kept_rows: dict[str, tuple[np.ndarray, int]] = {}
        pieces, norms, offset = [], [], 0
        for handle in sources:
            live = live_then[handle.file]
            kept = np.arange(handle.entry.rows) if live is None else np.flatnonzero(live)
            kept_rows[handle.file] = (kept, offset)
            offset += kept.size
            pieces.append(handle.table if live is None else handle.table.filter(pa.array(live)))
            norms.append(handle.norms[kept])
        dropped = sum(h.entry.rows for h in sources) - offset
        seg_dir = core.directory / SEGMENTS
        written: list[Path] = []
        new_entry = new_handle = index = None
        try:
            if offset:
                merged = pa.concat_tables([p.select(schema.names).cast(schema) for p in pieces])
                merged = merged.append_column(NORM_COLUMN, pa.array(np.concatenate(norms)))
                info = write_segment(seg_dir, merged_segment_file_name(state.info.format), merged)
                written.append(seg_dir / info.file)
                new_entry = SegmentEntry(info.file, info.rows, info.bytes, info.crc32)
                new_handle = core.new_handle(new_entry, verified=True)
                new_entry, index = self._index_merged(new_handle, written)
            with core.write_lock:
                state = core.state
                if core.closed or any(h.file not in {s.file for s in state.segments} for h in sources):
                    raise _Abandoned()
                merged_live = self._deletes_since(sources, kept_rows, live_then, offset)
                if new_entry is not None and merged_live is not None:
                    new_entry = with_deletions(seg_dir, new_entry, merged_live, state.version + 1)
                    written.append(seg_dir / new_entry.deletions_file)
                entries, placed = [], False
                for entry in state.manifest.segments:
                    if entry.file in files:
                        if not placed and new_entry is not None:
                            entries.append(new_entry)
                        placed = True
                    else:
                        entries.append(entry)
                new = {} if new_entry is None else {new_entry.file: (new_handle, merged_live)}
                core.publish("compact", entries, new=new, settled=files,
                             indexes={} if index is None else {new_entry.file: index})
        except _Abandoned:
            for path in written:
                path.unlink(missing_ok=True)
            return 0
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return dropped

    def _index_merged(self, handle: SegmentHandle, written: list[Path]) -> tuple[SegmentEntry, HnswIndex | None]:
        """Build the merged segment's index before publishing, so searches never lose one."""
        core = self._core
        config = core.state.info.index
        if not core.options.build_indexes or handle.entry.rows < config.min_rows:
            return handle.entry, None
        entry, index = build_index(core, handle, config)
        written.append(core.directory / SEGMENTS / entry.index_file)
        return entry, index

    def _deletes_since(self, sources: list[SegmentHandle], kept_rows: dict[str, tuple[np.ndarray, int]],
                       live_then: dict[str, np.ndarray | None], total: int) -> np.ndarray | None:
        """Live mask of the merged rows after deletes made while merging (None: all live)."""
        live_now = self._core.state.live
        merged_live = None
        for handle in sources:
            now = live_now[handle.file]
            if now is None or now is live_then[handle.file]:
                continue
            kept, start = kept_rows[handle.file]
            gone = np.flatnonzero(~now[kept])
            if gone.size:
                if merged_live is None:
                    merged_live = np.ones(total, dtype=bool)
                merged_live[start + gone] = False
        return merged_live


class _Abandoned(Exception):
    """The sources changed under a merge (closed table, segment dropped): discard it."""
