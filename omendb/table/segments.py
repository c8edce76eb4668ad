"""A table's view of one immutable segment: lazily mapped columns, norms and keys."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataclasses import replace

from ..convert import vectors_view
from ..errors import CorruptFileError
from ..index.hnsw import HnswIndex, load_hnsw
from ..index.keys import KeyIndex
from ..index.text import Postings, TextIndexConfig, analyze_rows
from ..storage.deletions import read_deletions, write_deletions
from ..storage.layout import deletions_file_name
from ..storage.manifest import SegmentEntry
from ..storage.segment import open_segment, read_segment_column

__all__ = ["SegmentHandle", "NORM_COLUMN", "with_deletions"]

#: Column of precomputed vector norms stored in every segment file.
NORM_COLUMN = "_norm"


class SegmentHandle:
    """One segment file; maps it on first use and verifies its checksum then."""

    def __init__(self, directory: Path, entry: SegmentEntry, *, vector_column: str,
                 id_column: str, dim: int, metric: str, verified: bool = False) -> None:
        self.directory = directory
        self.entry = entry
        self.vector_column = vector_column
        self.id_column = id_column
        self.dim = dim
        self.metric = metric
        self._verified = verified
        self._lock = threading.Lock()
        self._table: pa.Table | None = None
        self._vectors: np.ndarray | None = None
        self._norms: np.ndarray | None = None
        self._keys: KeyIndex | None = None
        self._hnsw: HnswIndex | None = None
        self._hnsw_file: str | None = None
        self._text: Postings | None = None
        self._text_file: str | None = None
        self._text_made: tuple[dict, Postings] | None = None  # (build params, postings) made from the rows
        self._text_lock = threading.Lock()
        #: Until the segment's own graph is published: a graph over its first
        #: ``provisional.rows`` rows, in memory only (``fresh.py``).
        self.provisional: HnswIndex | None = None

    @property
    def file(self) -> str:
        return self.entry.file

    @property
    def path(self) -> Path:
        return self.directory / self.entry.file

    @property
    def cache_key(self) -> str:
        """Identifies this immutable segment in process-wide caches (filter masks)."""
        key = self.__dict__.get("_cache_key")
        if key is None:
            key = self._cache_key = str(self.path)
        return key

    def _load(self) -> None:
        if self._table is not None:  # set last by a load: everything else is in place
            return
        with self._lock:
            if self._table is not None:
                return
            raw = open_segment(self.path, rows=self.entry.rows, size=self.entry.bytes,
                               crc32=None if self._verified else self.entry.crc32)
            if NORM_COLUMN not in raw.column_names or self.vector_column not in raw.column_names:
                raise CorruptFileError(f"{self.path}: segment lacks its vector or norm column")
            norms = raw.column(NORM_COLUMN).chunk(0)  # one batch per segment: one chunk
            self._norms = np.frombuffer(norms.buffers()[1], dtype=np.float32,
                                        count=norms.offset + len(norms))[norms.offset:]
            self._vectors = vectors_view(raw.column(self.vector_column), self.dim)
            self._table = raw.drop_columns([NORM_COLUMN])
            self._verified = True

    @property
    def table(self) -> pa.Table:
        """The segment's user columns (memory-mapped, zero copy)."""
        self._load()
        return self._table

    @property
    def vectors(self) -> np.ndarray:
        self._load()
        return self._vectors

    @property
    def norms(self) -> np.ndarray:
        self._load()
        return self._norms

    def keys(self) -> KeyIndex:
        """Primary-key lookup; reads only the key column when the segment is not loaded."""
        if self._keys is None:
            if self._table is not None:
                column = self._table.column(self.id_column)
            else:
                column = read_segment_column(self.path, self.id_column, rows=self.entry.rows,
                                             size=self.entry.bytes,
                                             crc32=None if self._verified else self.entry.crc32)
                self._verified = True
            self._keys = KeyIndex(column)
        return self._keys

    def hnsw(self) -> HnswIndex | None:
        """The segment's graph per the current entry (loaded once; None when unindexed).

        Raises :class:`CorruptFileError` when the index file fails verification.
        """
        entry = self.entry
        if entry.index_file is None:
            return None
        if self._hnsw_file == entry.index_file:
            return self._hnsw
        with self._lock:
            if self._hnsw_file != entry.index_file:
                self._hnsw = load_hnsw(self.directory / entry.index_file, metric=self.metric,
                                       size=entry.index_bytes, crc32=entry.index_crc32, rows=entry.rows)
                self._hnsw_file = entry.index_file
            return self._hnsw

    def text_postings(self, config: TextIndexConfig, use_file: bool = True) -> Postings:
        """The segment's full-text postings under ``config``: its text index file when it has
        a current one (loaded once; raises :class:`CorruptFileError` when it fails
        verification), else (or without ``use_file``) made from its rows and kept in memory
        (a search of rows with no text index yet)."""
        entry = self.entry
        if use_file and entry.text_file is not None and entry.text_params == config.build_params():
            if self._text_file != entry.text_file:
                with self._lock:
                    if self._text_file != entry.text_file:
                        self._text = Postings.load(self.directory / entry.text_file, size=entry.text_bytes,
                                                   crc32=entry.text_crc32, rows=entry.rows)
                        self._text_file = entry.text_file
            return self._text
        with self._text_lock:  # (one analysis of the rows, however many searches want it at once)
            made = self._text_made
            if made is None or made[0] != config.build_params():
                made = self._text_made = (config.build_params(), Postings.build(analyze_rows(config, self.table)))
        return made[1]

    def adopt_text(self, entry: SegmentEntry, postings: Postings) -> None:
        """Point at a freshly built text index without reloading it from disk."""
        with self._lock:
            self.entry = entry
            self._text, self._text_file = postings, entry.text_file
            self._text_made = None

    def adopt_index(self, entry: SegmentEntry, index: HnswIndex) -> None:
        """Point at a freshly built graph without reloading it from disk."""
        with self._lock:
            self.entry = entry
            self._hnsw, self._hnsw_file = index, entry.index_file
            self.provisional = None

    def initial_live_mask(self, entry: SegmentEntry | None = None) -> np.ndarray | None:
        """Live-row mask from ``entry``'s deletion file (default: the current entry; None:
        nothing deleted)."""
        entry = entry or self.entry
        if not entry.deletions_file:
            return None
        deleted = read_deletions(self.directory / entry.deletions_file, segment_rows=entry.rows)
        if deleted.size != entry.deleted:
            raise CorruptFileError(
                f"{self.directory / entry.deletions_file}: holds {deleted.size} deletions, "
                f"manifest says {entry.deleted}")
        live = np.ones(entry.rows, dtype=bool)
        live[deleted] = False
        return live


def with_deletions(directory: Path, entry: SegmentEntry, live: np.ndarray, version: int) -> SegmentEntry:
    """Write the deletion file of ``entry`` for its rows not ``live``, as version ``version``
    will publish it, and return the entry pointing at it."""
    name = deletions_file_name(entry.file, version)
    write_deletions(directory / name, np.flatnonzero(~live))
    return replace(entry, deleted=int(live.size - live.sum()), deletions_file=name)
