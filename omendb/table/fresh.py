"""Graphs over fresh rows: rows without a segment graph yet are searched through one.

A segment's own graph is built after its flush, at full quality (``indexer.py``); until
it is published, its rows would be scanned exactly, at a cost that grows with every
row written. The fresh indexer keeps a cheaper graph (:func:`fresh_hnsw`) over such
rows instead. It grows the memtable's graph as rows come in; the flush hands that
graph to the new segment (``SegmentHandle.provisional``), where it grows on until it
covers the segment, and is dropped once the segment's own graph is published.

A segment that waits for its graph without one handed over (flushed before its
memtable had a graph, or found on open) gets a fresh graph from its first row once a
search has scanned it exactly (:meth:`FreshIndexer.want`: a bulk load nobody searches
spends no CPU on graphs it would throw away), unless the fresh graphs already hold
:data:`FRESH_MAX_ROWS` rows (they live in memory: rows past that are scanned exactly
until their graphs are built). Segments a compaction is merging get theirs too: the
merge builds its segment's graph at full quality, ~10x the cost per row of a fresh
graph, and their rows are searched through the fresh graphs until it publishes. Rows
of a table below its index's ``min_rows`` (and segments that small) are scanned
exactly, as they would be without fresh graphs.

faiss cannot insert into a graph while it is searched, so each step inserts into a
copy and publishes the copy whole. A copy costs about 2.4 us per row it holds (103 ms
for 43K rows in a scratch test) against ~40 us to insert a row, so a step adds at
least a quarter of the rows the graph holds (copies then cost at most ~10 us per row
inserted); a search scans the rows past the graph exactly (at most a step's worth,
plus what arrived since).

The graphs live in memory only: after a restart, a search asks for them again. The
work runs on its own background thread, at a lower CPU priority than searches and
writes but above the index builder and compaction.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import describe
from ..index.calibration import calibrate, held_out
from ..index.hnsw import HnswIndex, fresh_hnsw
from .memtable import Memtable
from .segments import SegmentHandle
from .state import TableCore, TableState
from .workers import Workers, exiting

__all__ = ["FreshIndexer", "FRESH_MAX_ROWS", "FRESH_MIN_ROWS", "needs_own_graph"]

#: A memtable gets a graph once it holds this many rows, and the index config's
#: ``min_rows`` (fewer are scanned exactly, as a segment that small is).
FRESH_MIN_ROWS = 4_096
#: Sampled queries of a fresh-graph calibration (fewer than a segment's: it is redone as
#: graphs grow, and a memtable's rows are soon a segment's).
FRESH_CALIBRATION_QUERIES = 100
#: Rows a step adds at least, and at least this fraction of the graph's rows ...
FRESH_MIN_STEP = 2_048
FRESH_STEP_FRACTION = 1 / 4
#: ... and at most this many (a step's rows become searchable through the graph at its end).
FRESH_MAX_STEP = 32_768
#: Rows all fresh graphs of a table may hold before segments that have none are left to
#: exact scans (a row costs ~0.9 KB at 384 dimensions: fp16 codes and links).
FRESH_MAX_ROWS = 1_000_000


def needs_own_graph(handle: SegmentHandle, state: TableState) -> bool:
    """True while ``handle`` qualifies for a graph of its own (``min_rows``) and has no
    current one (unindexed or stale): only then does a fresh graph serve its rows."""
    config = state.info.index
    return handle.entry.rows >= config.min_rows and (handle.entry.index_file is None
                                                     or handle.entry.index_params != config.build_params())


class FreshIndexer:
    """Grows the fresh graphs of one table on the database's ``fresh`` worker.

    Each graph carries the table's latest fresh-graph calibration (``HnswIndex.calibration``,
    as a segment's index carries its own): measured again whenever a graph reaches twice
    the rows of the one last measured, so a search can ask for a recall here too.
    """

    def __init__(self, core: TableCore, workers: Workers | None) -> None:
        self._core = core
        self._worker = None if workers is None else workers.fresh
        self._curve: list[list[float]] | None = None
        self._curve_rows = 0
        self._wanted: set[str] = set()  # segments without a fresh graph that a search scanned exactly

    def schedule(self) -> None:
        """Look for rows to add (after a write or a flush); returns at once."""
        core = self._core
        if self._worker is None or core.stopping or not core.options.build_indexes:
            return
        self._worker.submit((id(core), "fresh"), self._run, self._failed)

    def want(self, handle: SegmentHandle) -> None:
        """A search scanned ``handle`` exactly, for want of any graph: grow it a fresh one
        (cheap when asked again: every such search calls it)."""
        if handle.file not in self._wanted:
            self._wanted.add(handle.file)
            self.schedule()

    def after_commit(self) -> None:
        """Rows were added: schedule a step once the memtable holds a step's worth past its
        graph (cheap: every add calls it; flushes schedule the rest)."""
        state = self._core.state
        graph = state.memtable.graph
        if _step_due(len(state.memtable), 0 if graph is None else graph.rows, _least_rows(state), complete=False):
            self.schedule()

    def _run(self) -> None:
        core = self._core
        while not (core.stopping or exiting()):
            step = self._next_step()
            if step is None:
                return
            owner, graph, vectors, norms, have = step
            stop = min(vectors.shape[0], have + FRESH_MAX_STEP)
            grown = graph or fresh_hnsw(vectors.shape[1], core.state.info.metric)
            if stop >= 2 * self._curve_rows:  # measured on the step's last rows before they go in
                cut = max(have, stop - held_out(stop, FRESH_CALIBRATION_QUERIES))
                if cut > have:
                    grown = grown.grown(vectors[have:cut], norms[have:cut])
                curve = calibrate(grown, vectors[:cut], norms[:cut], core.state.info.metric, vectors[cut:stop],
                                  queries=FRESH_CALIBRATION_QUERIES)
                if curve is not None:
                    self._curve, self._curve_rows = curve, stop
                have = cut
            grown = grown.grown(vectors[have:stop], norms[have:stop])
            grown.calibration = self._curve
            with core.changing() as state:
                segment = owner.segment if isinstance(owner, Memtable) else owner
                if isinstance(owner, Memtable):
                    owner.adopt_graph(grown)
                # A flushed memtable's rows sit at the same positions in its segment (the flusher
                # hands over only then): the graph serves the segment, unless it has one as large.
                if (segment is not None and needs_own_graph(segment, state)
                        and (segment.provisional is None or segment.provisional.rows < grown.rows)):
                    segment.provisional = grown

    def _next_step(self) -> tuple[Any, HnswIndex | None, np.ndarray, np.ndarray, int] | None:
        """(memtable or segment, its graph, its rows, their norms, rows the graph covers) of
        the next step: the memtable being flushed and segments first (their rows are all
        there is), then the memtable once it holds a step's worth of rows past its graph."""
        with self._core.changing() as state:
            sealed = state.sealed
            candidates: list[tuple[Any, bool]] = [  # (newest first: the likeliest to be searched)
                (h, True) for h in reversed(state.segments) if needs_own_graph(h, state)]
            if sealed is not None:
                candidates.insert(0, (sealed.handle, True) if sealed.written and sealed.handle is not None
                                  else (sealed.memtable, True))
            candidates.append((state.memtable, False))
            views = {id(m): m.view() for m, _ in candidates if isinstance(m, Memtable)}
            least = _least_rows(state)
            held = sum(h.provisional.rows for h in state.segments if h.provisional is not None) + sum(
                0 if v.graph is None else v.graph.rows for v in views.values())
            self._wanted &= {h.file for h in state.segments}
        for owner, complete in candidates:
            if isinstance(owner, Memtable):
                view = views[id(owner)]
                graph, vectors, norms = view.graph, view.vectors, view.norms
            else:
                graph = owner.provisional
                if graph is None and (owner.file not in self._wanted or owner.entry.rows < least
                                      or held + owner.entry.rows > FRESH_MAX_ROWS):
                    continue
                vectors, norms = owner.vectors, owner.norms
            have = 0 if graph is None else graph.rows
            if _step_due(vectors.shape[0], have, least, complete):
                return owner, graph, vectors, norms, have
        return None

    def _failed(self, exc: BaseException) -> None:
        if not self._core.stopping:
            warnings.warn(f"omendb: growing a graph over fresh rows of table {self._core.name!r} failed "
                          f"({describe(exc)}); those rows are scanned exactly until their segment's graph is "
                          "built", RuntimeWarning, stacklevel=1)


def _least_rows(state: TableState) -> int:
    """Rows a memtable or segment needs before a fresh graph serves it."""
    return max(FRESH_MIN_ROWS, state.info.index.min_rows)


def _step_due(rows: int, have: int, least: int, complete: bool) -> bool:
    """Whether a graph over ``have`` of ``rows`` rows should grow now: past ``least`` rows,
    by every row left once no more come (``complete``), else by a step's worth."""
    if rows < least or have >= rows:
        return False
    return complete or rows - have >= max(FRESH_MIN_STEP, int(have * FRESH_STEP_FRACTION))
