"""Compaction: merge small segments and drop deleted rows, racing safely with writes.

A merge reads its source segments as of a snapshot, writes the merged segment (and
its HNSW index) without holding the table's locks, then, under the write lock,
re-applies every delete that happened meanwhile (including the deletes half of
upserts) to the merged segment and publishes it with one manifest swap.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import describe
from ..index.hnsw import BuildCancelled, build_hnsw
from ..segments import NORM_COLUMN, SegmentHandle
from ..storage.deletions import write_deletions
from ..storage.manifest import SegmentEntry
from ..storage.segment import SUFFIXES, write_segment
from ..worker import exiting
from .layout import SEGMENTS

__all__ = ["CompactionMixin"]


class CompactionMixin:
    """``compact()`` and the background compaction of the writable table (mixed into ``Table``)."""

    def compact(self) -> dict[str, Any]:
        """Flush, then merge segments and drop deleted rows now; return when published.

        Every segment with deleted rows is rewritten without them, and segments are
        merged into as few as ``CompactionPolicy.max_rows`` allows. Returns what it did:
        ``segments_before`` (segments, counting the unflushed rows as one),
        ``segments_after``, ``rows_dropped`` (deleted rows removed from segments),
        ``version``.
        """
        self._check_writable()
        with self._compact_lock:
            with self._lock:
                rows_of = {h.file: h.entry.rows for h in self._segments}
                before = len(rows_of) + (1 if any(m.live_rows for m in self._memtables()) else 0)
            self.flush()  # also drops segments whose rows are all deleted
            with self._lock:
                dropped = sum(rows for file, rows in rows_of.items()
                              if file not in {h.file for h in self._segments})
            dropped += sum(self._merge(group) for group in self._plan(force=True))
        return {"segments_before": before, "segments_after": len(self._segments),
                "rows_dropped": dropped, "version": self.version}

    def _schedule_compaction(self) -> None:
        if self._read_only or self._workers is None or not self._options.compaction.enabled:
            return
        self._workers.compactor.submit((id(self), "compact"), self._compact_auto, self._compaction_failed)

    def _compact_auto(self) -> None:
        with self._compact_lock:
            for group in self._plan(force=False):
                if self._closed or self._closing:
                    return
                self._merge(group)

    def _compaction_failed(self, exc: BaseException) -> None:
        if isinstance(exc, BuildCancelled) or self._closed or self._closing:
            return  # stopped on purpose (the table closed, the interpreter exits): nothing failed
        warnings.warn(f"omendb: background compaction of table {self.name!r} failed ({describe(exc)}); its "
                      "segments are unchanged and the next flush retries", RuntimeWarning, stacklevel=1)

    def _plan(self, *, force: bool) -> list[list[str]]:
        """Groups of segment files to merge, oldest first (see ``CompactionPolicy``)."""
        policy = self._options.compaction
        with self._lock:
            sizes = [(h.file, h.entry.rows,
                      0 if self._live[h.file] is None else int(h.entry.rows - self._live[h.file].sum()))
                     for h in self._segments]
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
        with self._lock:
            sources = [h for h in self._segments if h.file in files]
            live_then = {h.file: self._live[h.file] for h in sources}
        if len(sources) != len(files):
            return 0
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
        seg_dir = self._dir / SEGMENTS
        written: list[Path] = []
        new_entry = new_handle = index = None
        try:
            if offset:
                merged = pa.concat_tables([p.select(self._schema.names).cast(self._schema) for p in pieces])
                merged = merged.append_column(NORM_COLUMN, pa.array(np.concatenate(norms)))
                info = write_segment(seg_dir, f"seg-m{os.urandom(6).hex()}{SUFFIXES[self._format]}", merged)
                written.append(seg_dir / info.file)
                new_entry = SegmentEntry(info.file, info.rows, info.bytes, info.crc32)
                new_handle = self._handle(new_entry, verified=True)
                new_entry, index = self._index_merged(new_handle, written)
            with self._write_lock:
                if self._closed or any(h.file not in {s.file for s in self._segments} for h in sources):
                    raise _Abandoned()
                merged_live = self._deletes_since(sources, kept_rows, live_then, offset)
                version = self._manifest.version + 1
                if new_entry is not None and merged_live is not None:
                    del_name = f"{Path(new_entry.file).stem}.{version:010d}.del"
                    write_deletions(seg_dir / del_name, np.flatnonzero(~merged_live))
                    written.append(seg_dir / del_name)
                    new_entry = replace(new_entry, deleted=int((~merged_live).sum()), deletions_file=del_name)
                entries, placed = [], False
                for entry in self._manifest.segments:
                    if entry.file in files:
                        if not placed and new_entry is not None:
                            entries.append(new_entry)
                        placed = True
                    else:
                        entries.append(entry)
                manifest = self._manifest.evolve(segments=tuple(entries), created_at=time.time(), change="compact")
                self._store.publish(manifest)
                with self._lock:
                    handles, placed = [], False
                    for handle in self._segments:
                        if handle.file in files:
                            if not placed and new_handle is not None:
                                new_handle.entry = new_entry
                                if index is not None:
                                    new_handle.adopt_index(new_entry, index)
                                handles.append(new_handle)
                            placed = True
                        else:
                            handles.append(handle)
                    live = {f: m for f, m in self._live.items() if f not in files}
                    if new_handle is not None:
                        live[new_handle.file] = merged_live
                    self._segments, self._live, self._manifest = handles, live, manifest
                    self._dirty -= set(files)
        except _Abandoned:
            for path in written:
                path.unlink(missing_ok=True)
            return 0
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return dropped

    def _index_merged(self, handle: SegmentHandle, written: list[Path]):
        """Build the merged segment's index before publishing, so searches never lose one."""
        config = self._index_config
        if not self._options.build_indexes or handle.entry.rows < config.min_rows:
            return handle.entry, None
        index = build_hnsw(handle.vectors, handle.norms, self._metric, config,
                           should_stop=lambda: self._closed or self._closing or exiting())
        name = f"{Path(handle.file).stem}.{os.urandom(4).hex()}.hnsw"
        size, crc = index.save(self._dir / SEGMENTS / name)
        written.append(self._dir / SEGMENTS / name)
        entry = replace(handle.entry, index_file=name, index_bytes=size, index_crc32=crc,
                        index_params=config.build_params())
        return entry, index

    def _deletes_since(self, sources: list[SegmentHandle], kept_rows: dict[str, tuple[np.ndarray, int]],
                       live_then: dict[str, np.ndarray | None], total: int) -> np.ndarray | None:
        """Live mask of the merged rows after deletes made while merging (None: all live)."""
        merged_live = None
        for handle in sources:
            now = self._live[handle.file]
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
