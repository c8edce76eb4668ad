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
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..errors import ClosedError
from ..index.configs import IndexConfig, index_config_from_dict
from ..index.hnsw import HnswIndex
from ..storage.layout import MANIFESTS, SEGMENTS, schema_from_text
from ..storage.manifest import Manifest, ManifestStore, SegmentEntry
from .memtable import Memtable, MemtableView
from .options import TableOptions
from .segments import SegmentHandle

__all__ = ["TableInfo", "TableState", "SealedMemtable", "TableCore"]


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

    @classmethod
    def of(cls, manifest: Manifest) -> "TableInfo":
        info = manifest.table
        return cls(schema_from_text(info["schema"]), info["id_column"], info["vector_column"], info["metric"],
                   int(info["dim"]), info.get("format", "arrow"), index_config_from_dict(info.get("index")))


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
    live_then: np.ndarray | None = None   # memtable rows written to the segment
    handle: SegmentHandle | None = None   # the written segment


@dataclass(frozen=True)
class TableState:
    """One consistent state of a table (see the module docstring)."""

    manifest: Manifest
    info: TableInfo
    segments: tuple[SegmentHandle, ...]
    live: Mapping[str, np.ndarray | None]   # per segment file; None: no row deleted
    dirty: frozenset[str]                    # segments with deletions not yet published
    memtable: Memtable
    sealed: SealedMemtable | None = None

    @property
    def version(self) -> int:
        return self.manifest.version

    def memtables(self) -> list[Memtable]:
        """Unflushed rows: the memtable being flushed (if any), then the current one."""
        return [self.memtable] if self.sealed is None else [self.sealed.memtable, self.memtable]

    def handle(self, segment_file: str) -> SegmentHandle | None:
        return next((h for h in self.segments if h.file == segment_file), None)


class TableCore:
    """The owner of one table's state (see the module docstring).

    ``closing`` tells background work to stop at its next check; ``closed`` that the
    table is closed. ``bad_indexes`` holds the index files this process found damaged.
    """

    def __init__(self, name: str, directory: Path, options: TableOptions, manifest: Manifest) -> None:
        self.name = name
        self.directory = Path(directory)
        self.options = options
        self.store = ManifestStore(self.directory / MANIFESTS)
        self.write_lock = threading.RLock()
        self._lock = threading.Lock()
        self.closing = False
        self.closed = False
        self.bad_indexes: set[str] = set()
        info = TableInfo.of(manifest)
        handles = tuple(self._new_handle(e, info) for e in manifest.segments)
        self._state = TableState(manifest, info, handles, {h.file: h.initial_live_mask() for h in handles},
                                 frozenset(), self.new_memtable(info))

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
                new: Mapping[str, tuple[SegmentHandle, np.ndarray | None]] | None = None,
                settled: Iterable[str] | None = (), sealed_done: bool = False,
                indexes: Mapping[str, HnswIndex] | None = None, table: dict[str, Any] | None = None,
                wal_seq: int | None = None, next_id: int | None = None) -> Manifest:
        """Publish the next version and make it the state: the one way a version comes to be.

        The caller holds ``write_lock``. ``segments`` are the version's entries in order:
        a file the state has keeps its handle (and live mask); ``new`` gives the handle and
        live mask of each new file; files in neither leave the table. ``settled``: the
        segments whose pending deletions this version records (``None``: all of them).
        ``sealed_done``: the sealed memtable's rows are in the new version. ``indexes``:
        freshly built graphs, by segment file. ``table``, ``wal_seq``, ``next_id``: new
        values of those manifest fields.
        """
        new, indexes = new or {}, indexes or {}
        fields: dict[str, Any] = {"segments": tuple(segments), "created_at": time.time(), "change": change}
        for key, value in (("table", table), ("wal_seq", wal_seq), ("next_id", next_id)):
            if value is not None:
                fields[key] = value
        manifest = self._state.manifest.evolve(**fields)
        self.store.publish(manifest)
        with self._lock:
            state = self._state
            known = {h.file: h for h in state.segments}
            handles, live = [], {}
            for entry in manifest.segments:
                if entry.file in new:
                    handle, mask = new[entry.file]
                else:
                    handle, mask = known[entry.file], state.live[entry.file]
                if entry.file in indexes:
                    handle.adopt_index(entry, indexes[entry.file])
                else:
                    handle.entry = entry  # same rows; new deletion or index bookkeeping
                handles.append(handle)
                live[entry.file] = mask
            dirty = frozenset() if settled is None else state.dirty - set(settled)
            self.bad_indexes -= set(indexes)
            self._state = replace(state, manifest=manifest, info=TableInfo.of(manifest) if table else state.info,
                                  segments=tuple(handles), live=live, dirty=dirty & set(live),
                                  sealed=None if sealed_done else state.sealed)
        return manifest

    def adopt(self, manifest: Manifest) -> None:
        """Make a published ``manifest`` the state (readers following the writer, checkouts),
        reusing the handles of segments already mapped."""
        info = TableInfo.of(manifest)
        known = {h.file: h for h in self._state.segments}
        handles = []
        for entry in manifest.segments:
            handle = known.get(entry.file)
            if handle is None:
                handle = self._new_handle(entry, info)
            else:
                handle.entry = entry
            handles.append(handle)
        live = {h.file: h.initial_live_mask() for h in handles}
        with self._lock:
            self._state = replace(self._state, manifest=manifest, info=info, segments=tuple(handles), live=live,
                                  dirty=frozenset())
