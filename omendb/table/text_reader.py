"""The full-text and hybrid side of a table's reads (``query/text.py`` does the ranking).

Every segment is searched through its text index file when it has a current one, and
otherwise through postings made from its rows and kept in memory until the file is
published; the memtable's rows are analysed once, as searches first see them. A damaged
text index file is reported once, never used, and rebuilt by the writer.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import pyarrow as pa

from ..errors import CorruptFileError, InvalidArgumentError
from ..index.text import Postings, TextIndexConfig
from ..query.search import DISTANCE, SearchPart
from ..query.snapshot import Snapshot, SnapshotText
from ..query.text import (HYBRID_DEPTH, RELEVANCE, SCORE, check_weights, hybrid_table, query_terms, text_hits,
                          text_parts, text_table)
from .memtable import Memtable, MemtableView
from .reader import TableReader, check_k
from .segments import SegmentHandle
from .state import TableCore, TableState

__all__ = ["TextReader"]


class TextReader:
    """Text searches (``search(text=...)``) and hybrid ones (a vector and ``text``) of a table."""

    def __init__(self, core: TableCore, reader: TableReader,
                 on_bad_text: Callable[[SegmentHandle], None] = lambda handle: None) -> None:
        self._core = core
        self._reader = reader
        self._on_bad_text = on_bad_text

    def search(self, q: Any, text: Any, k: int, *, where: str | None, columns: Sequence[str] | None,
               exact: bool, ef: int | None, recall: float | None, vector_weight: float = 1.0,
               text_weight: float = 1.0) -> pa.Table:
        """``text`` alone: rows by BM25 score (``_score``, descending). With a vector ``q``:
        both searches over the same rows (one state, taken once) and ``where``, fused by
        reciprocal rank fusion."""
        captured = self._reader.capture()
        state = captured[0]
        config = state.info.text
        if config is None:
            raise InvalidArgumentError(f"table {self._core.name!r} has no text index: create one with "
                                       f"create_text_index(columns)")
        check_k(k)
        terms = query_terms(text, config)
        names = self._reader.columns(columns, state)
        if q is None:
            if ef is not None or recall is not None:
                raise InvalidArgumentError("ef and recall tune the vector side of a search: give a query vector too")
            return self._text(terms, int(k), where, names, captured)
        check_weights(vector_weight, text_weight)
        queries, batch = self._reader.queries(q, state.info.dim, self._core.name)
        if batch:
            raise InvalidArgumentError("a hybrid search takes one query vector (and one text), "
                                       f"got {queries.shape[0]} vectors")
        depth = max(2 * int(k), HYBRID_DEPTH)
        id_column = state.info.id_column
        with_id = names if id_column in names else [*names, id_column]
        vector = self._reader.search(queries[0], depth, where=where, columns=with_id, exact=exact, ef=ef,
                                     recall=recall, captured=captured)
        found = self._text(terms, depth, where, with_id, captured)
        fused = hybrid_table(vector, found, id_column, with_id, int(k), vector_weight=vector_weight,
                             text_weight=text_weight)
        return fused.select([*names, RELEVANCE, DISTANCE, SCORE])

    def _text(self, terms: list[str], k: int, where: str | None, names: list[str],
              captured: tuple[TableState, list[tuple[Memtable, MemtableView]]]) -> pa.Table:
        state, views = captured
        config = state.info.text
        parts, postings = self._text_parts(state, views)
        hits = text_hits(text_parts(parts, postings, where=where, vector_column=state.info.vector_column), terms, k,
                         k1=config.k1, b=config.b)
        return text_table(parts, hits, names, state.info.schema)

    def _text_parts(self, state: TableState, views: list[tuple[Memtable, MemtableView]]
                    ) -> tuple[list[SearchPart], list[Postings]]:
        """The rows of ``state`` and ``views`` in table order (segments, then memtables) as
        parts, each with the postings of its terms: a memtable gives one part per range of
        rows with postings of its own."""
        config = state.info.text
        parts: list[SearchPart] = []
        postings: list[Postings] = []
        for handle in state.segments:
            parts.append(SearchPart(handle.table, handle.vectors, handle.norms, state.deletions[handle.file].live,
                                    cache_key=handle.cache_key))
            postings.append(self._segment_postings(handle, config))
        for memtable, view in views:
            for start, stop, ranged in memtable.text_postings(config, view.table):
                live = view.live[start:stop]
                parts.append(SearchPart(view.table.slice(start, stop - start), view.vectors[start:stop],
                                        view.norms[start:stop], None if live.all() else live))
                postings.append(ranged)
        return parts, postings

    def snapshot(self) -> Snapshot:
        """A frozen view of the live rows now (unflushed rows included), for SQL glue; its
        text searches (a table with a text index) read the same rows."""
        state, views = self._reader.capture()
        snapshot = self._reader.snapshot_of(state, views)
        if state.info.text is not None:
            snapshot.text = SnapshotText(state.info.text, lambda: self._text_parts(state, views))
        return snapshot

    def _segment_postings(self, handle: SegmentHandle, config: TextIndexConfig) -> Postings:
        core = self._core
        if handle.entry.text_file not in core.bad_texts:
            try:
                return handle.text_postings(config)
            except CorruptFileError as exc:
                warnings.warn(f"omendb: {exc}; searching that segment's text without it and rebuilding it",
                              RuntimeWarning, stacklevel=5)
                with core.changing():
                    core.bad_texts.add(handle.entry.text_file)
                self._on_bad_text(handle)
        return handle.text_postings(config, use_file=False)

