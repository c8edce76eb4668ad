"""A table's state, its one owner, and the one path that publishes a new version.

:class:`TableState` is a value: one published manifest version, the handles of the
segments it names, their live-row masks, the segments whose deletions are not yet
published, and the memtables of rows not yet in a segment. A new state replaces the
old one whole; a reader that took a state keeps a consistent view of the table.

:class:`TableCore` owns the current state. Every change goes through it: the writer
stages rows and marks deletions under :meth:`TableCore.changing`, and flushes, index
builds, merges, parameter changes and salvage all publish through
:meth:`TableCore.publish`, which writes the manifest and then swaps the state. Readers
of other processes and checkouts adopt a manifest with :meth:`TableCore.adopt`.

Two locks: ``write_lock`` serialises writers and publishers (held for a whole commit
or publish); the state lock, inside it, only guards the swap and the memtables' rows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..errors import ClosedError
from ..index.configs import IndexConfig, index_config_from_dict
from ..index.text import Postings, TextIndexConfig
from ..index.hnsw import HnswIndex
from ..storage.layout import MANIFESTS, SEGMENTS, schema_from_text
from ..storage.manifest import Manifest, ManifestStore, SegmentEntry
from ..storage.mirror import TableMirror
from .memtable import Memtable, MemtableView
from .options import TableOptions
from .segments import SegmentHandle

__all__ = ["TableInfo", "TableState", "SealedMemtable", "TableCore", "Deletions", "Pending"]


@dataclass(frozen=True)
class TableInfo:
    """What a manifest says the table is: schema, key and vector columns, metric, format, index."""

    schema: pa.Schema
    id_column: str
    vector_column: str
    metric: str
    dim: int
    format: str
    index: IndexConfig
    text: TextIndexConfig | None = None  # the full-text index, when one was created
    embedding: dict[str, Any] | None = None  # the embedding function's record (name, params, source_column)

    @classmethod
    def of(cls, manifest: Manifest) -> "TableInfo":
        info = manifest.table
        text = info.get("text_index")
        return cls(schema_from_text(info["schema"]), info["id_column"], info["vector_column"], info["metric"],
                   int(info["dim"]), info.get("format", "arrow"), index_config_from_dict(info.get("index")),
                   None if text is None else TextIndexConfig.from_dict(text), info.get("embedding"))


@dataclass
class SealedMemtable:
    """A full memtable taken out of service, on its way to becoming a segment (``flusher.py``)."""

    memtable: Memtable
    seq: int                  # the last WAL record whose rows it holds
    wal_paths: list[Path]     # WAL files holding records <= seq, removed once published
    done: threading.Event = field(default_factory=threading.Event)  # published, or failed
    error: BaseException | None = None
    write_lock: threading.Lock = field(default_factory=threading.Lock)  # one writer of the segment file
    written: bool = False
    rows_written: np.ndarray | None = None  # memtable rows written to the segment (live as of ``seq``)
    handle: SegmentHandle | None = None     # the written segment


#: Deletions of one segment's rows by log records not yet in a published version:
#: ``(seq, row positions)`` per record, oldest first.
Pending = tuple[tuple[int, np.ndarray], ...]


@dataclass(frozen=True)
class Deletions:
    """One segment's deleted rows, three ways: as every applied record leaves them
    (``live``, what this process searches), as the published version records them
    (``published``), and the deletions in between, by the record that made them."""

    live: np.ndarray | None        # None: no row deleted
    published: np.ndarray | None
    pending: Pending = ()

    @classmethod
    def none_pending(cls, published: np.ndarray | None) -> "Deletions":
        return cls(published, published, ())

    def as_of(self, seq: int) -> "Deletions":
        """The deletions a version covering the log up to ``seq`` records, and the rest pending."""
        settled = [positions for at, positions in self.pending if at <= seq]
        if not settled:
            return self
        published = np.ones(self.live.size, bool) if self.published is None else self.published.copy()
        published[np.concatenate(settled)] = False
        return Deletions(self.live, published, tuple(p for p in self.pending if p[0] > seq))


@dataclass(frozen=True)
class TableState:
    """One consistent state of a table (see the module docstring).

    A published version holds exactly the log's records up to its ``wal_seq``: a
    deletion by a later record (the old row of an upsert whose new row is still in the
    memtable, say) stays pending until the version that holds that record.
    """

    manifest: Manifest
    info: TableInfo
    segments: tuple[SegmentHandle, ...]
    deletions: Mapping[str, Deletions]   # per segment file
    memtable: Memtable
    sealed: SealedMemtable | None = None

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def live(self) -> Mapping[str, np.ndarray | None]:
        """Live-row mask of every segment as this process sees it (None: no row deleted)."""
        return {file: d.live for file, d in self.deletions.items()}

    @property
    def dirty(self) -> frozenset[str]:
        """Segments with deletions a published version does not record yet."""
        return frozenset(file for file, d in self.deletions.items() if d.pending)

    def memtables(self) -> list[Memtable]:
        """Unflushed rows: the memtable being flushed (if any), then the current one."""
        return [self.memtable] if self.sealed is None else [self.sealed.memtable, self.memtable]

    def handle(self, segment_file: str) -> SegmentHandle | None:
        return next((h for h in self.segments if h.file == segment_file), None)


class TableCore:
    """The owner of one table's state (see the module docstring).

    ``closing`` tells background work to stop at its next check; ``closed`` that the
    table is closed. ``bad_indexes`` holds the index files this process found damaged.
    ``merging`` holds the segment files a merge in progress reads (the compactor sets it):
    the index builder leaves them alone, as their rows get the merged segment's graph.
    """

    def __init__(self, name: str, directory: Path, options: TableOptions, manifest: Manifest,
                 mirror: TableMirror | None = None) -> None:
        self.name = name
        self.directory = Path(directory)
        self.options = options
        self.mirror = mirror  # the table in an object store, which this folder works on (or None)
        self.store = ManifestStore(self.directory / MANIFESTS, publish_first=None if mirror is None else
                                   lambda manifest: mirror.publish(manifest, self.directory / SEGMENTS))
        self.write_lock = threading.RLock()
        self._lock = threading.Lock()
        self._adopt_lock = threading.Lock()
        self.closing = False
        self.closed = False
        self.bad_indexes: set[str] = set()
        self.bad_texts: set[str] = set()  # text index files this process found damaged
        self.merging: frozenset[str] = frozenset()
        info = TableInfo.of(manifest)
        handles = tuple(self._new_handle(e, info) for e in manifest.segments)
        self._state = TableState(manifest, info, handles,
                                 {h.file: Deletions.none_pending(h.initial_live_mask()) for h in handles},
                                 self.new_memtable(info))

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> TableState:
        """The current state (a value: it never changes under the caller)."""
        return self._state

    def read(self) -> tuple[TableState, list[MemtableView]]:
        """The current state and views of its memtables, taken together."""
        with self._lock:
            state = self._state
            return state, [m.view() for m in state.memtables()]

    @property
    def stopping(self) -> bool:
        """True once background work of the table should stop (closing or closed)."""
        return self.closed or self.closing

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"table {self.name!r} is closed")

    # ----------------------------------------------------------------- changing
    @contextlib.contextmanager
    def changing(self) -> Iterator[TableState]:
        """Hold the state lock to change memtable rows or :meth:`swap` the state."""
        with self._lock:
            yield self._state

    def swap(self, **changes: Any) -> TableState:
        """Replace fields of the state (caller is inside :meth:`changing`)."""
        self._state = replace(self._state, **changes)
        return self._state

    def new_memtable(self, info: TableInfo | None = None) -> Memtable:
        info = info or self._state.info
        return Memtable(info.schema, info.id_column, info.vector_column, self.options.memtable_bytes)

    def new_handle(self, entry: SegmentEntry, *, verified: bool = False) -> SegmentHandle:
        """A handle of a segment of this table (``verified``: just written, no checksum pass)."""
        return self._new_handle(entry, self._state.info, verified)

    def _new_handle(self, entry: SegmentEntry, info: TableInfo, verified: bool = False) -> SegmentHandle:
        return SegmentHandle(self.directory / SEGMENTS, entry, vector_column=info.vector_column,
                             id_column=info.id_column, dim=info.dim, metric=info.metric, verified=verified)

    # ---------------------------------------------------------------- publishing
    def publish(self, change: str, segments: Sequence[SegmentEntry], *,
                new: Mapping[str, SegmentHandle] | None = None,
                deletions: Mapping[str, Deletions] | None = None, sealed_done: bool = False,
                indexes: Mapping[str, HnswIndex] | None = None, texts: Mapping[str, Postings] | None = None,
                table: dict[str, Any] | None = None, wal_seq: int | None = None,
                next_id: int | None = None) -> Manifest:
        """Publish the next version and make it the state: the one way a version comes to be.

        The caller holds ``write_lock``. ``segments`` are the version's entries in order:
        a file the state has keeps its handle (and deletions); ``new`` gives the handle of
        each new file; files in neither leave the table. ``deletions``: the new
        bookkeeping of the segments whose deletions change (every new file has one).
        ``sealed_done``: the sealed memtable's rows are in the new version. ``indexes``:
        freshly built graphs, by segment file; ``texts`` likewise full-text postings.
        ``table``, ``wal_seq``, ``next_id``: new values of those manifest fields.
        """
        new, indexes, deletions, texts = new or {}, indexes or {}, deletions or {}, texts or {}
        fields: dict[str, Any] = {"segments": tuple(segments), "created_at": time.time(), "change": change}
        for key, value in (("table", table), ("wal_seq", wal_seq), ("next_id", next_id)):
            if value is not None:
                fields[key] = value
        manifest = self._state.manifest.evolve(**fields)
        self.store.publish(manifest)
        with self._lock:
            state = self._state
            known = {h.file: h for h in state.segments}
            handles, kept = [], {}
            for entry in manifest.segments:
                handle = new[entry.file] if entry.file in new else known[entry.file]
                if entry.file in indexes:
                    handle.adopt_index(entry, indexes[entry.file])
                if entry.file in texts:
                    handle.adopt_text(entry, texts[entry.file])
                handle.entry = entry  # same rows; new deletion or index bookkeeping
                handles.append(handle)
                kept[entry.file] = deletions[entry.file] if entry.file in deletions else state.deletions[entry.file]
            self.bad_indexes -= set(indexes)
            self._state = replace(state, manifest=manifest, info=TableInfo.of(manifest) if table else state.info,
                                  segments=tuple(handles), deletions=kept,
                                  sealed=None if sealed_done else state.sealed)
        return manifest

    def adopt(self, manifest: Manifest) -> None:
        """Make a published ``manifest`` the state (readers following the writer, checkouts),
        reusing the handles of segments already mapped. A version older than the current
        one is ignored (two threads of a reader refreshing at once): a table never goes back."""
        with self._adopt_lock:
            if manifest.version <= self._state.version:
                return
            info = TableInfo.of(manifest)
            known = {h.file: h for h in self._state.segments}
            handles = [known.get(entry.file) or self._new_handle(entry, info) for entry in manifest.segments]
            deletions = {h.file: Deletions.none_pending(h.initial_live_mask(entry))
                         for h, entry in zip(handles, manifest.segments)}
            with self._lock:
                for handle, entry in zip(handles, manifest.segments):
                    handle.entry = entry
                self._state = replace(self._state, manifest=manifest, info=info, segments=tuple(handles),
                                      deletions=deletions)
