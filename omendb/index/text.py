"""Full-text search: BM25 over the text of many parts (segments and the memtable).

Each part keeps its own postings (:class:`Postings`: for every term, the rows that hold
it and how often), built once from its rows and, for a segment, saved beside it. Scores
are computed at query time from statistics summed over every part the search sees (live
rows, their token count, each query term's document frequency), so rankings equal one
BM25 index over all live rows, however the rows are split into segments. (A library
that bakes its corpus' IDF into stored scores, as ``bm25s`` does, cannot give that
across segments; omendb uses ``bm25s`` for tokenizing and as the reference its tests
compare rankings with.)

Scoring is Lucene's BM25 (as ``bm25s``' default ``method="lucene"``):
``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` and
``score(d) = sum over query terms of idf(t) * tf / (tf + k1 * (1 - b + b * len(d) / avglen))``.
A query term given twice counts twice.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ..errors import CorruptFileError, InvalidArgumentError, MissingDependencyError, SchemaError, storage_error
from ..storage.fileio import publish_written, verify_file
from .hnsw import BuildCancelled

__all__ = ["TextIndexConfig", "Postings", "TextPart", "bm25_top", "analyze_rows", "MAX_QUERY_CHARS",
           "FORMAT_VERSION"]

FORMAT_VERSION = 1
#: Longest text query accepted (characters).
MAX_QUERY_CHARS = 10_000
_FORMAT_KEY, _VERSION_KEY = b"omendb.format", b"omendb.format_version"
_FORMAT = b"omendb-text-postings"
_LANGUAGES = ("english",)  # stemmer and stop words: PyStemmer's and bm25s' lists


@dataclass(frozen=True)
class TextIndexConfig:
    """BM25 full-text index over one or more string columns (their texts joined by a space).

    Text is lowercased and split into words of two or more word characters (letters,
    digits, ``_``; a run of CJK characters is one word); with
    ``language="english"`` (the default) English stop words are dropped and words are
    reduced to their stem (Snowball, via PyStemmer), so "running" finds "runs".
    ``language=None`` keeps every word as written (names, codes, other languages).

    Attributes:
        columns: the string columns indexed.
        language: ``"english"`` or ``None``.
        k1: how fast repeated occurrences of a term stop adding to a score (1.5).
        b: how much longer texts are penalised (0: not at all, 1: fully; 0.75).
    """

    columns: tuple[str, ...]
    language: str | None = "english"
    k1: float = 1.5
    b: float = 0.75

    def __post_init__(self) -> None:
        columns = (self.columns,) if isinstance(self.columns, str) else (
            tuple(self.columns) if isinstance(self.columns, (list, tuple)) else ())
        if not columns or not all(isinstance(c, str) and c for c in columns):
            raise InvalidArgumentError(f"a text index needs one or more column names, got {self.columns!r}")
        if len(set(columns)) != len(columns):
            raise InvalidArgumentError(f"a text index names a column twice: {list(columns)}")
        object.__setattr__(self, "columns", columns)
        if self.language is not None and self.language not in _LANGUAGES:
            raise InvalidArgumentError(f"text index language must be one of {list(_LANGUAGES)} or None, "
                                       f"got {self.language!r}")
        for name, value, low, high in (("k1", self.k1, 0.0, 10.0), ("b", self.b, 0.0, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise InvalidArgumentError(f"text index {name} must be a number in [{low}, {high}], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "columns": list(self.columns)}

    def build_params(self) -> dict[str, Any]:
        """What a segment's postings depend on (``k1`` and ``b`` only weigh them at query time)."""
        return {"columns": list(self.columns), "language": self.language}

    def check_schema(self, schema: pa.Schema, table: str) -> None:
        """Refuse columns ``schema`` lacks or that do not hold strings."""
        for column in self.columns:
            if column not in schema.names:
                raise SchemaError(f"unknown column {column!r}; table {table!r} has {', '.join(schema.names)}")
            kind = schema.field(column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise SchemaError(f"column {column!r} is {kind}, not a string column: a text index needs text")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextIndexConfig":
        return cls(columns=tuple(d["columns"]), language=d.get("language", "english"), k1=d.get("k1", 1.5),
                   b=d.get("b", 0.75))

    def analyze(self, texts: Sequence[str | None]) -> list[list[str]]:
        """Each text's terms, in order (None and empty texts: none)."""
        bm25s = _bm25s()
        texts = [t or "" for t in texts]
        if self.language is None:
            return bm25s.tokenize(texts, stopwords=None, return_ids=False, show_progress=False)
        return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(self.language), return_ids=False,
                              show_progress=False)

    def texts(self, table: pa.Table) -> list[str | None]:
        """The text each row of ``table`` is indexed by: its columns joined by a space."""
        columns = [table.column(c).to_pylist() for c in self.columns]
        if len(columns) == 1:
            return columns[0]
        return [" ".join(v for v in row if v) for row in zip(*columns)]


class Postings:
    """One part's terms: for each (sorted) term, the rows holding it and how often; and
    each row's length in terms. Immutable; saved as one Arrow IPC file (``formats/text.md``)."""

    def __init__(self, terms: pa.StringArray, offsets: np.ndarray, rows: np.ndarray, counts: np.ndarray,
                 lengths: np.ndarray) -> None:
        self.terms = terms
        self._offsets = offsets  # term i's rows are rows[offsets[i]:offsets[i + 1]]
        self._rows = rows
        self._counts = counts
        #: Terms per row (uint32).
        self.lengths = lengths
        self._lookup: dict[str, int] | None = None

    @property
    def row_count(self) -> int:
        return self.lengths.shape[0]

    @classmethod
    def build(cls, terms_per_row: Iterable[list[str]], batch_rows: int = 65_536) -> "Postings":
        """Postings of rows given as their terms (see :func:`analyze_rows`); terms are held
        as NumPy ids, ``batch_rows`` rows at a time, never as one Python list."""
        vocabulary: dict[str, int] = {}
        id_batches: list[np.ndarray] = []
        lengths: list[int] = []
        pending: list[int] = []
        for terms in terms_per_row:
            lengths.append(len(terms))
            pending.extend(vocabulary.setdefault(term, len(vocabulary)) for term in terms)
            if len(lengths) % batch_rows == 0:
                id_batches.append(np.asarray(pending, dtype=np.int64))
                pending = []
        id_batches.append(np.asarray(pending, dtype=np.int64))
        rows_total = max(len(lengths), 1)
        row_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        names = np.array(list(vocabulary), dtype=object)
        order = np.argsort(names, kind="stable")
        rank = np.empty(len(names), dtype=np.int64)
        rank[order] = np.arange(len(names))
        # one key per (term, row) occurrence; sorted, each run of a key is a count
        keys, counts = np.unique(rank[np.concatenate(id_batches)] * rows_total + row_of, return_counts=True)
        term_of, rows = np.divmod(keys, rows_total)
        offsets = np.searchsorted(term_of, np.arange(len(names) + 1)).astype(np.int64)
        return cls(pa.array(names[order].tolist(), type=pa.string()), offsets, rows.astype(np.int32),
                   counts.astype(np.uint32), np.asarray(lengths, dtype=np.uint32))

    def lookup(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, counts) of ``term``; empty arrays when no row holds it."""
        if self._lookup is None:
            self._lookup = {t: i for i, t in enumerate(self.terms.to_pylist())}
        i = self._lookup.get(term)
        if i is None:
            return _NO_ROWS, _NO_COUNTS
        start, stop = self._offsets[i], self._offsets[i + 1]
        return self._rows[start:stop], self._counts[start:stop]

    # ------------------------------------------------------------------ files
    def save(self, path: Path) -> tuple[int, int]:
        """Write atomically (temp, fsync, rename, fsync dir); returns (bytes, crc32).

        The file holds one record batch of one row: each column a list holding one
        whole array, so every array is one contiguous buffer a memory map can view.
        """
        columns = {"terms": self.terms, "offsets": pa.array(self._offsets), "rows": pa.array(self._rows),
                   "counts": pa.array(self._counts), "lengths": pa.array(self.lengths)}
        batch = pa.record_batch({name: pa.LargeListArray.from_arrays(pa.array([0, len(values)], pa.int64()), values)
                                 for name, values in columns.items()})
        schema = batch.schema.with_metadata({_FORMAT_KEY: _FORMAT, _VERSION_KEY: str(FORMAT_VERSION).encode()})
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                writer.write_batch(batch.replace_schema_metadata(schema.metadata))
            return publish_written(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(exc, f"writing text index {path}") from None

    @classmethod
    def load(cls, path: Path, *, size: int, crc32: int, rows: int) -> "Postings":
        """Verify size and checksum, then memory-map the file."""
        verify_file(path, size=size, crc32=crc32, what="text index")
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
            meta = reader.schema.metadata or {}
            if meta.get(_FORMAT_KEY) != _FORMAT:
                raise CorruptFileError(f"{path}: not an omendb text index")
            if meta.get(_VERSION_KEY) != str(FORMAT_VERSION).encode():
                raise CorruptFileError(f"{path}: text index format version {meta.get(_VERSION_KEY)!r} is "
                                       f"not one this omendb reads ({FORMAT_VERSION})")
            batch = reader.get_batch(0)
            arrays = {name: batch.column(name).values for name in ("terms", "offsets", "rows", "counts", "lengths")}
        except (pa.ArrowInvalid, KeyError, IndexError) as exc:
            raise CorruptFileError(f"{path}: not a readable text index: {exc}") from None
        postings = cls(arrays["terms"], *(np.asarray(arrays[n]) for n in ("offsets", "rows", "counts", "lengths")))
        if postings.row_count != rows:
            raise CorruptFileError(f"{path}: text index covers {postings.row_count} rows, segment has {rows}")
        if postings._offsets.shape[0] != len(postings.terms) + 1:
            raise CorruptFileError(f"{path}: text index has {len(postings.terms)} terms but "
                                   f"{postings._offsets.shape[0]} offsets")
        return postings


_NO_ROWS, _NO_COUNTS = np.zeros(0, np.int32), np.zeros(0, np.uint32)


@dataclass(frozen=True)
class TextPart:
    """One part as a text search sees it: its postings, which rows are live (None: all)
    and which a query may return (None: every live row; else a mask of live rows only)."""

    postings: Postings
    live: np.ndarray | None = None
    allowed: np.ndarray | None = None


def bm25_top(parts: Sequence[TextPart], terms: list[str], k: int, *, k1: float,
             b: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each part's best rows for ``terms`` (a query's terms): ``(scores, positions)``,
    descending, at most ``k`` rows, only rows scoring above 0 (those holding a term).

    Corpus statistics (live rows, their mean length, each term's document frequency)
    are summed over all ``parts``, so scores compare across them. A term given ``n``
    times counts ``n`` times (its postings are read once). Among rows tied on score the
    earlier row comes first.
    """
    distinct: dict[str, int] = {}
    for term in terms:
        distinct[term] = distinct.get(term, 0) + 1
    terms, repeats = list(distinct), list(distinct.values())
    rows_total, length_total = 0, 0
    for part in parts:
        lengths = part.postings.lengths
        rows_total += lengths.shape[0] if part.live is None else int(np.count_nonzero(part.live))
        length_total += int(lengths.sum(dtype=np.int64) if part.live is None
                            else lengths[part.live].sum(dtype=np.int64))
    found = [[part.postings.lookup(term) for term in terms] for part in parts]
    frequency = [0] * len(terms)  # live rows holding each term, over all parts
    for part, per_term in zip(parts, found):
        for i, (rows, _) in enumerate(per_term):
            frequency[i] += rows.shape[0] if part.live is None else int(np.count_nonzero(part.live[rows]))
    avg_length = length_total / rows_total if rows_total else 0.0
    idf = [n * math.log(1 + (rows_total - df + 0.5) / (df + 0.5)) for df, n in zip(frequency, repeats)]
    out = []
    for part, per_term in zip(parts, found):
        hits = [(rows, counts, weight) for (rows, counts), weight in zip(per_term, idf) if rows.shape[0]]
        if not hits or avg_length == 0:
            out.append((np.zeros(0, np.float32), np.zeros(0, np.int64)))
            continue
        rows = np.concatenate([h[0] for h in hits])
        tf = np.concatenate([h[1] for h in hits]).astype(np.float64)
        weights = np.concatenate([np.full(h[0].shape[0], h[2]) for h in hits])
        norm = k1 * (1 - b + b * part.postings.lengths[rows] / avg_length)
        contribution = weights * tf / (tf + norm)
        unique, inverse = np.unique(rows, return_inverse=True)
        scores = np.bincount(inverse, weights=contribution)
        keep = scores > 0
        mask = part.live if part.allowed is None else part.allowed
        if mask is not None:
            keep &= mask[unique]
        unique, scores = unique[keep], scores[keep]
        if scores.shape[0] > k:  # every row scoring at least the k-th best (ties at the cut stay)
            best = scores >= np.partition(scores, scores.shape[0] - k)[scores.shape[0] - k]
            unique, scores = unique[best], scores[best]
        order = np.lexsort((unique, -scores))[:k]  # (ties: the earlier row)
        out.append((scores[order].astype(np.float32), unique[order].astype(np.int64)))
    return out


def analyze_rows(config: TextIndexConfig, table: pa.Table, should_stop: Callable[[], bool] = lambda: False,
                 chunk_rows: int = 32_768) -> Iterator[list[str]]:
    """The terms of each row of ``table`` under ``config``, analysed ``chunk_rows`` at a time
    (``should_stop`` is checked between chunks; it returning true raises :class:`BuildCancelled`)."""
    for start in range(0, table.num_rows, chunk_rows):
        if should_stop():
            raise BuildCancelled()
        yield from config.analyze(config.texts(table.slice(start, chunk_rows)))


def _bm25s():
    try:
        import bm25s
    except ImportError:  # pragma: no cover (a dependency)
        raise MissingDependencyError("full-text search needs the bm25s package: pip install bm25s") from None
    return bm25s


_STEMMERS = threading.local()  # (a PyStemmer object must not be used by two threads at once)


def _stemmer(language: str):
    stemmers = _STEMMERS.__dict__
    stemmer = stemmers.get(language)
    if stemmer is None:
        try:
            import Stemmer
        except ImportError:  # pragma: no cover (a dependency)
            raise MissingDependencyError("stemming needs the PyStemmer package: pip install PyStemmer") from None
        stemmer = stemmers[language] = Stemmer.Stemmer(language)
    return stemmer
