"""Index maintenance of a table: what needs a graph or a text index, building it, publishing it."""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import replace
from typing import Any, Callable

from ..errors import ClosedError, IndexBuildError, describe
from ..index.calibration import add_calibrated, held_out
from ..index.configs import IndexConfig
from ..index.hnsw import BuildCancelled, HnswIndex, build_hnsw
from ..index.text import Postings, TextIndexConfig, analyze_rows
from ..storage.layout import SEGMENTS, index_file_name, text_file_name
from ..storage.manifest import SegmentEntry
from .activity import graph_threads
from .segments import SegmentHandle
from .state import TableCore, TableState
from .workers import Workers, exiting

__all__ = ["IndexBuilder", "build_index", "grow_index", "build_text_index"]

#: The entry fields a graph build sets.
_GRAPH_FIELDS = ("index_file", "index_bytes", "index_crc32", "index_params", "index_calibration")


def build_index(core: TableCore, handle: SegmentHandle, config: IndexConfig,
                cancelled: Callable[[], bool] = lambda: False) -> tuple[SegmentEntry, HnswIndex]:
    """Build ``handle``'s graph over all but its last rows, calibrate it on those, add them
    (:func:`grow_index`) and save it beside the segment: (the entry naming it and carrying
    its recall curve, the graph).

    Stops with :class:`BuildCancelled` once the table closes, the interpreter exits or
    ``cancelled()`` says so (checked between chunks of rows).
    """
    cut = handle.entry.rows - held_out(handle.entry.rows)
    index = build_hnsw(handle.vectors[:cut], handle.norms[:cut], core.state.info.metric, config,
                       should_stop=lambda: core.stopping or exiting() or cancelled(), threads=graph_threads)
    return grow_index(core, handle, config, index, cancelled)


def grow_index(core: TableCore, handle: SegmentHandle, config: IndexConfig, index: HnswIndex,
               cancelled: Callable[[], bool] = lambda: False,
               earlier_curve: list[list[float]] | None = None) -> tuple[SegmentEntry, HnswIndex]:
    """Insert ``handle``'s rows past the ones ``index`` holds, calibrating it on the last of
    them first, and save it beside the segment (a graph grown by too few rows to measure
    keeps ``earlier_curve``)."""
    vectors, norms = handle.vectors, handle.norms

    def add(start: int, stop: int) -> None:
        index.add(vectors[start:stop], norms[start:stop], threads=graph_threads,
                  should_stop=lambda: core.stopping or exiting() or cancelled())

    curve = add_calibrated(index, vectors, norms, core.state.info.metric, add) or earlier_curve
    name = index_file_name(handle.file)
    size, crc = index.save(core.directory / SEGMENTS / name)
    entry = replace(handle.entry, index_file=name, index_bytes=size, index_crc32=crc,
                    index_params=config.build_params(), index_calibration=curve)
    return entry, index


def build_text_index(core: TableCore, handle: SegmentHandle, config: TextIndexConfig,
                     cancelled: Callable[[], bool] = lambda: False) -> tuple[dict, Postings]:
    """Build ``handle``'s full-text postings and save them beside the segment: (the entry
    fields naming the file, the postings). Stops with :class:`BuildCancelled` as
    :func:`build_index` does (checked between chunks of rows)."""
    postings = Postings.build(analyze_rows(config, handle.table,
                                           should_stop=lambda: core.stopping or exiting() or cancelled()))
    name = text_file_name(handle.file)
    size, crc = postings.save(core.directory / SEGMENTS / name)
    return {"text_file": name, "text_bytes": size, "text_crc32": crc, "text_params": config.build_params()}, postings


class IndexBuilder:
    """HNSW graph and text index builds of a writable table, on the database's index-builder thread."""

    def __init__(self, core: TableCore, workers: Workers | None,
                 will_merge: Callable[[str], bool] = lambda segment_file: False) -> None:
        """``will_merge(file)``: a compaction queued or running will merge that segment (its
        rows will get the merged segment's graph, so none is built for it alone)."""
        self._core = core
        self._workers = workers
        self._will_merge = will_merge
        self._errors: dict[str, BaseException] = {}  # by segment file (graphs) or "<file> (text)"
        self._progress = threading.Condition()

    def submit(self, segment_file: str) -> None:
        core = self._core
        if self._workers is None or not core.options.build_indexes or core.closed:
            return
        # Waiters are woken by a publish or a failure, not by a build that found nothing to do
        # (one skipped for a merge returns at once: waking its waiter would resubmit it, a busy loop).
        self._workers.indexer.submit((id(core), segment_file), lambda: self._build(segment_file),
                                     lambda exc: self._failed(segment_file, exc))

    def needs_text(self, handle: SegmentHandle, state: TableState) -> bool:
        config = state.info.text
        entry = handle.entry
        return (config is not None and f"{handle.file} (text)" not in self._errors
                and (entry.text_file is None or entry.text_params != config.build_params()
                     or entry.text_file in self._core.bad_texts))

    def submit_text(self, segment_file: str) -> None:
        core = self._core
        if self._workers is None or not core.options.build_indexes or core.closed:
            return
        self._workers.indexer.submit((id(core), segment_file, "text"), lambda: self._build_text(segment_file),
                                     lambda exc: self._failed(f"{segment_file} (text)", exc))

    def _build_text(self, segment_file: str) -> None:
        """Builder thread: build one segment's text index, then publish it."""
        self._build_one(segment_file, self.needs_text, lambda state: state.info.text,
                        lambda handle, config, cancelled: build_text_index(self._core, handle, config,
                                                                           cancelled=cancelled),
                        change="text_index", built_as="texts", file_field="text_file")

    def needs_index(self, handle: SegmentHandle, state: TableState) -> bool:
        config = state.info.index
        entry = handle.entry
        return (entry.rows >= config.min_rows and handle.file not in self._errors
                and (entry.index_file is None or entry.index_params != config.build_params()
                     or handle.file in self._core.bad_indexes))

    def schedule(self) -> None:
        """Queue a build of every segment that lacks a current index (called after each
        publish of new segments: waiters look again)."""
        if not self._core.options.build_indexes:
            return
        state = self._core.state
        for handle in state.segments:
            if self.needs_index(handle, state):
                self.submit(handle.file)
            if self.needs_text(handle, state):
                self.submit_text(handle.file)
        self._progressed()

    def _build(self, segment_file: str) -> None:
        """Builder thread: build one segment's graph, then publish it."""
        def build(handle: SegmentHandle, config: IndexConfig, cancelled: Callable[[], bool]) -> tuple[dict, HnswIndex]:
            entry, index = build_index(self._core, handle, config, cancelled=cancelled)
            return {name: getattr(entry, name) for name in _GRAPH_FIELDS}, index

        self._build_one(segment_file, self.needs_index, lambda state: state.info.index, build,
                        change="index", built_as="indexes", file_field="index_file")

    def _build_one(self, segment_file: str, needs: Callable[[SegmentHandle, TableState], bool],
                   config_of: Callable[[TableState], Any], build: Callable[..., tuple[dict, Any]], *,
                   change: str, built_as: str, file_field: str) -> None:
        """Build one segment's graph or text index (``build(handle, config, cancelled)``: the
        entry fields naming its file, the built index), then publish it (never under the write lock)."""
        core = self._core
        state = core.state
        handle = state.handle(segment_file)
        config = config_of(state)
        if handle is None or core.stopping or not needs(handle, state):
            return
        if segment_file in core.merging or self._will_merge(segment_file):
            return  # the merge builds its segment's; when the compaction ends, this is scheduled again
        # A merge that takes this segment meanwhile builds its rows' own: stop building this one.
        fields, built = build(handle, config, lambda: segment_file in core.merging)
        with core.write_lock:
            state = core.state
            current = [e for e in state.manifest.segments if e.file == segment_file]
            if core.closed or not current or config != config_of(state):
                (core.directory / SEGMENTS / fields[file_field]).unlink(missing_ok=True)  # changed meanwhile
                return
            entry = replace(current[0], **fields)
            core.publish(change, [entry if e.file == segment_file else e for e in state.manifest.segments],
                         **{built_as: {segment_file: built}})
        self._progressed()

    def _failed(self, segment_file: str, exc: BaseException) -> None:
        if isinstance(exc, BuildCancelled) or self._core.stopping:
            return  # stopped on purpose: nothing failed
        with self._progress:
            self._errors[segment_file] = exc
            self._progress.notify_all()
        warnings.warn(f"omendb: building the index of {segment_file} in table {self._core.name!r} failed "
                      f"({describe(exc)}); that segment is searched exactly meanwhile", RuntimeWarning, stacklevel=1)

    def _progressed(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def configure(self, config: IndexConfig) -> None:
        """Publish new HNSW parameters (caller checked the table is writable); rebuilds follow."""
        self._configure(config, "index", lambda state: state.info.index, self.needs_index, self._build,
                        is_mine=lambda key: not key.endswith(" (text)"))

    def configure_text(self, config: TextIndexConfig) -> None:
        """Publish a full-text index config (caller checked the table is writable and the
        columns); the text indexes it changes are (re)built in the background."""
        self._configure(config, "text_index", lambda state: state.info.text, self.needs_text, self._build_text,
                        is_mine=lambda key: key.endswith(" (text)"))

    def _configure(self, config: Any, field: str, current: Callable[[TableState], Any],
                   needs: Callable[[SegmentHandle, TableState], bool], build: Callable[[str], None], *,
                   is_mine: Callable[[str], bool]) -> None:
        """Publish ``config`` as the manifest's ``table[field]``, forget the build failures
        ``is_mine`` names (they may not recur), then build what it changes."""
        core = self._core
        with core.write_lock:
            core.check_open()
            state = core.state
            if config != current(state):
                core.publish(f"create_{field}", state.manifest.segments,  # (create_index, create_text_index)
                             table=dict(state.manifest.table, **{field: config.to_dict()}))
                with self._progress:
                    for key in [k for k in self._errors if is_mine(k)]:
                        del self._errors[key]
        if not core.options.build_indexes:  # no builder thread: build here
            state = core.state
            for handle in state.segments:
                if needs(handle, state):
                    build(handle.file)
        self.schedule()

    def wait(self, timeout: float | None, wait_for_flush: Callable[[float | None], bool]) -> bool:
        """Wait until every segment that should have an index has a current one.

        Returns True when done, False on timeout; raises :class:`IndexBuildError` if a
        build failed. ``wait_for_flush`` first waits for a segment still being flushed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not wait_for_flush(timeout):  # a segment still being flushed will need one
            return False
        with self._progress:
            while True:
                if self._core.closed:
                    raise ClosedError(f"table {self._core.name!r} was closed while waiting for its indexes")
                if self._errors:
                    file, exc = next(iter(self._errors.items()))
                    raise IndexBuildError(f"building the index of {file} failed: {describe(exc)}") from exc
                state = self._core.state
                missing = [h for h in state.segments if self.needs_index(h, state)]
                missing_text = [h for h in state.segments if self.needs_text(h, state)]
                if not missing and not missing_text:
                    return True
                if not self._core.options.build_indexes:
                    return False
                for handle in missing:
                    self.submit(handle.file)
                for handle in missing_text:
                    self.submit_text(handle.file)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._progress.wait(0.5 if remaining is None else min(0.5, remaining))
