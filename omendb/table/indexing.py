"""Index maintenance of a table: what needs a graph, building and publishing it."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

from ..errors import IndexBuildError, describe
from ..index.hnsw import BuildCancelled, HnswConfig, build_hnsw
from ..segments import SegmentHandle
from ..worker import exiting
from .layout import SEGMENTS

__all__ = ["IndexMixin"]


class IndexMixin:
    """HNSW index builds of the writable table (mixed into ``Table``)."""

    def _submit_index(self, segment_file: str) -> None:
        if self._read_only or self._workers is None or not self._options.build_indexes:
            return
        self._workers.indexer.submit((id(self), segment_file), lambda: self._build_index(segment_file),
                                     lambda exc: self._index_failed(segment_file, exc), self._index_progress)

    def _on_bad_index(self, handle: SegmentHandle) -> None:
        if not self._closed:
            self._submit_index(handle.file)

    def _needs_index(self, handle: SegmentHandle) -> bool:
        config = self._index_config
        entry = handle.entry
        return (entry.rows >= config.min_rows and handle.file not in self._index_errors
                and (entry.index_file is None or entry.index_params != config.build_params()
                     or handle.file in self._bad_indexes))

    def _schedule_index_builds(self) -> None:
        if not self._options.build_indexes:
            return
        with self._lock:
            todo = [h.file for h in self._segments if self._needs_index(h)]
        for file in todo:
            self._submit_index(file)

    def _build_index(self, segment_file: str) -> None:
        """Builder thread: build one segment's graph, then publish it (never under the write lock)."""
        with self._lock:
            handle = next((h for h in self._segments if h.file == segment_file), None)
            config = self._index_config
        if handle is None or self._closed or self._closing or not self._needs_index(handle):
            return
        index = build_hnsw(handle.vectors, handle.norms, self._metric, config,
                           should_stop=lambda: self._closed or self._closing or exiting())
        name = f"{Path(segment_file).stem}.{os.urandom(4).hex()}.hnsw"
        path = self._dir / SEGMENTS / name
        size, crc = index.save(path)
        with self._write_lock:
            current = [e for e in self._manifest.segments if e.file == segment_file]
            if self._closed or not current or config != self._index_config:
                path.unlink(missing_ok=True)  # the segment or the parameters changed meanwhile
                return
            entry = replace(current[0], index_file=name, index_bytes=size, index_crc32=crc,
                            index_params=config.build_params())
            manifest = self._manifest.evolve(
                segments=tuple(entry if e.file == segment_file else e for e in self._manifest.segments),
                created_at=time.time(), change="index")
            self._store.publish(manifest)
            with self._lock:
                handle.adopt_index(entry, index)
                self._bad_indexes.discard(segment_file)
                self._manifest = manifest

    def _index_failed(self, segment_file: str, exc: BaseException) -> None:
        if isinstance(exc, BuildCancelled) or self._closed or self._closing:
            return  # stopped on purpose: nothing failed
        with self._index_cond:
            self._index_errors[segment_file] = exc
        warnings.warn(f"omendb: building the index of {segment_file} in table {self.name!r} failed "
                      f"({describe(exc)}); that segment is searched exactly meanwhile", RuntimeWarning, stacklevel=1)

    def _index_progress(self) -> None:
        with self._index_cond:
            self._index_cond.notify_all()

    def create_index(self, m: int = 16, ef_construction: int = 200, *, ef_search: int | None = None,
                     min_rows: int | None = None) -> None:
        """Set the HNSW parameters and (re)build, in the background, every index they change.

        Segments with at least ``min_rows`` rows get an index; smaller ones (and rows
        not yet flushed) are searched exactly. Use :meth:`wait_for_index` to wait.
        See :class:`omendb.HnswConfig` for what each parameter trades.
        """
        self._check_writable()
        current = self._index_config
        config = HnswConfig(m=m, ef_construction=ef_construction,
                            ef_search=current.ef_search if ef_search is None else ef_search,
                            min_rows=current.min_rows if min_rows is None else min_rows)
        with self._write_lock:
            self._check_open()
            if config != current:
                info = dict(self._manifest.table, index=config.to_dict())
                manifest = self._manifest.evolve(table=info, created_at=time.time(), change="create_index")
                self._store.publish(manifest)
                with self._lock:
                    self._manifest = manifest
                    self._index_config = config
                    self._index_errors.clear()
        if not self._options.build_indexes:
            for handle in list(self._segments):
                if self._needs_index(handle):
                    self._build_index(handle.file)
        self._schedule_index_builds()

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait until every segment that should have an index has a current one.

        Returns True when done, False on timeout. Raises the builder's error if a
        build failed.
        """
        self._check_writable()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._wait_for_sealed(timeout):  # a segment still being flushed will need one
            return False
        with self._index_cond:
            while True:
                if self._index_errors:
                    file, exc = next(iter(self._index_errors.items()))
                    raise IndexBuildError(f"building the index of {file} failed: {describe(exc)}") from exc
                with self._lock:
                    missing = [h for h in self._segments if self._needs_index(h)]
                if not missing:
                    return True
                if not self._options.build_indexes:
                    return False
                for handle in missing:
                    self._submit_index(handle.file)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._index_cond.wait(0.5 if remaining is None else min(0.5, remaining))
