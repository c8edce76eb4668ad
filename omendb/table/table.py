"""``LocalTable``: an embedded table, wired from its state owner and its collaborators.

Write path: validate -> WAL record (fsynced) -> apply to the memtable (and deletion
masks) -> when the memtable is large, flush it to a segment and publish a manifest.
Read path: take the current state (segments + masks + memtable views) in one short
step, then search it without holding any lock. Background work (flushes, index
builds, compaction) runs on the database's worker threads and publishes new versions.

Who does what (one module each): ``state`` owns the state and the publish path;
``reader`` answers queries; ``writer`` logs and applies changes; ``flusher`` turns
memtables into segments; ``indexer`` builds graphs; ``compactor`` merges segments;
``versions`` lists, follows and cleans up versions; ``recovery`` decides what the log
replays on open.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pyarrow as pa

from ..api import Table
from ..embedding import is_text_query
from ..errors import InvalidArgumentError, ReadOnlyError, VersionNotFoundError
from ..index.configs import IndexConfig, requested_index_config
from ..index.text import TextIndexConfig
from ..query.snapshot import Snapshot
from ..storage.layout import LOCK, WAL
from ..storage.locking import WriterLock
from ..storage.manifest import Manifest
from ..storage.mirror import TableMirror
from ..storage.wal import RecordKind, WalWriter
from . import activity
from .compactor import Compactor
from .discard import discard_table_folder
from .embedder import TableEmbedder, query_vectors, with_vectors
from .export import export_table
from .flusher import Flusher
from .fresh import FreshIndexer
from .indexer import IndexBuilder
from .options import TableOptions
from .reader import TableReader
from .recovery import (check_no_missing_versions, latest_complete_manifest, latest_manifest, log_files, read_log,
                       remove_orphans, salvage_log)
from .retention import Retention
from .registry import pinned, register
from .state import TableCore
from .text_reader import TextReader
from .versions import Follower, cleanup, list_versions
from .writer import WriteLog, Writer

if TYPE_CHECKING:
    from .workers import Workers

__all__ = ["LocalTable"]


class LocalTable(Table):
    """One table of a database. Obtain it from ``Database.create_table``/``open_table``.

    In a database opened ``read_only`` (reader processes) the table sees the newest
    published version, refreshing itself before each read; ``checkout(v)`` returns a
    table fixed at version ``v``. Both refuse writes with ``ReadOnlyError``.
    """

    def __init__(self, name: str, directory: Path, options: TableOptions, workers: Workers | None, *,
                 checkout: Manifest | None = None, salvage: bool = False, owner: object = None,
                 embedding: Callable[[list[str]], Any] | None = None, mirror: TableMirror | None = None) -> None:
        self.name = name
        # The database that opened the table: while the table is in use, its database stays
        # alive, and so does the close-at-exit that flushes it and stops its background work.
        self._owner = owner
        self._options = options
        self._checkout_version = None if checkout is None else checkout.version
        self._read_only_reason = (None if checkout is None and not options.read_only else
                                  f"a checkout of version {checkout.version}" if checkout is not None
                                  else "the database was opened read_only=True")
        self._writer_lock: WriterLock | None = None
        self._follower: Follower | None = None
        self._writer = self._flusher = self._indexer = self._compactor = self._fresh = self._log = None
        self._retention: Retention | None = None
        self.salvage_report: dict[str, Any] | None = None
        directory = Path(directory)
        if mirror is not None and (checkout is not None or options.read_only):  # (a writer copies under its lock)
            mirror.copy_to(directory, checkout=checkout)
        if checkout is not None:
            self.core = TableCore(name, directory, options, checkout, mirror)
        elif options.read_only:
            self.core = TableCore(name, directory, options, latest_complete_manifest(name, directory), mirror)
            self._follower = Follower(self.core)
        else:
            directory.mkdir(parents=True, exist_ok=True)  # (a table in an object store: the cache's copy)
            self._writer_lock = WriterLock(directory / LOCK, name, options.lock_timeout)
            try:
                if mirror is not None:
                    mirror.copy_to(directory, writer=True)
                self._open_for_writing(directory, workers, salvage, mirror)
            except BaseException:
                self._writer_lock.release()
                raise
        info = self.core.state.info
        self.id_column = info.id_column
        self.vector_column = info.vector_column
        self._embedder = None if info.embedding is None else \
            TableEmbedder(name, info.embedding, info.vector_column, info.dim)
        if embedding is not None:
            self.use_embedding(embedding)
        if self._writer is None:
            self._reader = TableReader(self.core)
            self._text_reader = TextReader(self.core, self._reader)
        register(self)

    def _open_for_writing(self, directory: Path, workers: Workers | None, salvage: bool, mirror: TableMirror | None) -> None:
        wal_dir = directory / WAL
        wal_dir.mkdir(exist_ok=True)
        wal_files = log_files(wal_dir)  # (listed before the manifests: see _latest_complete_manifest)
        manifest = latest_manifest(self.name, directory)
        hint = f"`omendb salvage --db {directory.parent} --table {self.name}`"
        salvaged = None
        if salvage:
            salvaged = salvage_log(directory, manifest)
            records = salvaged.records
        else:
            check_no_missing_versions(directory, manifest, wal_files, salvage_hint=hint)
            records = read_log(wal_files, manifest, salvage_hint=hint)
        core = self.core = TableCore(self.name, directory, self._options, manifest, mirror)
        log = self._log = WriteLog(wal_dir, self._options.fsync, seq=manifest.wal_seq, next_id=manifest.next_id)
        self._indexer = IndexBuilder(core, workers, will_merge=lambda file: self._compactor.will_merge(file))
        self._compactor = Compactor(core, workers, flush=self.flush, after_publish=self._indexer.schedule)
        self._fresh = FreshIndexer(core, workers)
        self._flusher = Flusher(core, log, workers, after_publish=self._after_publish)
        self._reader = TableReader(core, on_bad_index=lambda handle: self._indexer.submit(handle.file),
                                   on_exact_scan=self._fresh.want)
        self._text_reader = TextReader(core, self._reader,
                                       on_bad_text=lambda handle: self._indexer.submit_text(handle.file))
        self._writer = Writer(core, self._reader, log, self._flusher, after_commit=self._fresh.after_commit)
        for record in records:
            self._writer.apply(record.kind, record.payload, record.seq)
            log.seq = record.seq
        remove_orphans(directory)
        with core.write_lock:
            if salvaged is not None:
                # Publish everything kept, then retire the old log (its copies are in the salvage folder).
                self._flusher.publish_replayed("salvage", wal_files)
                self._flusher.start_new_wal()
                self.salvage_report = {"table": self.name, "records_kept": len(records),
                                       "rows_kept": salvaged.rows_kept, "lost": salvaged.lost,
                                       "copies": str(salvaged.folder), "version": core.state.version}
            elif wal_files and log.seq > manifest.wal_seq:
                log.wal = WalWriter(wal_files[-1], fsync=self._options.fsync)
                if core.state.memtable.nbytes >= self._options.memtable_bytes:
                    self._flusher.flush_locked("flush")
            else:
                self._flusher.start_new_wal(remove=wal_files)
        self._compactor.schedule()
        self._indexer.schedule()
        self._fresh.schedule()
        self._retention = Retention(core, workers, self._options.keep_versions_for)
        self._retention.start()

    def _after_publish(self, new_segment: bool) -> None:
        # Compaction first: the builder then skips the segments it will merge.
        self._compactor.schedule()  # new segment or new deletions: the policy may apply
        if new_segment:
            self._indexer.schedule()
            self._fresh.schedule()  # (the new segment's graph may not cover all its rows)

    # ------------------------------------------------------------- lifecycle
    @property
    def closed(self) -> bool:
        """True once the table (or its database) has been closed."""
        return self.core.closed

    @property
    def read_only(self) -> bool:
        """True for checked-out versions and tables of a database opened ``read_only``."""
        return self._read_only_reason is not None

    def _before_read(self) -> None:
        """Run before every read: the table is open (readers also follow the writer)."""
        activity.note()
        self.core.check_open()
        if self._follower is not None:
            self._follower.before_read()

    def _writable(self) -> Writer:
        activity.note()
        self.core.check_open()
        if self._read_only_reason is not None:
            raise ReadOnlyError(f"table {self.name!r} is read-only ({self._read_only_reason}); "
                                "writes go through the writable table of the writer process")
        self._writer.check_writable()
        return self._writer

    def close(self, *, discard: bool = False) -> None:
        """Flush the memtable (writer) and release the table's files and writer lock.

        ``discard=True`` (``Database.drop_table``): nothing is flushed, background work
        stops, and the table's folder is removed while its writer lock is still held,
        so no other process can open the table in between.
        """
        core = self.core
        if core.closed:
            return
        if self._writer is None:
            if discard:
                raise ReadOnlyError(f"table {self.name!r} is read-only ({self._read_only_reason}); "
                                    "the writer drops tables")
            core.closed = True
            return
        core.closing = True  # cancels this table's index build or merge in progress
        self._retention.close()
        self._flusher.wait_for_sealed()
        with core.write_lock:
            try:
                if not discard:
                    self._flusher.flush_for_close()
            finally:
                core.closed = True
                self._log.close()
                lock, self._writer_lock = self._writer_lock, None
                if not discard:
                    lock.release()
        if discard:
            discard_table_folder(core.directory, self.name, lock=lock)

    # ----------------------------------------------------------------- facts
    @property
    def schema(self) -> pa.Schema:
        """The table's Arrow schema (primary key, vector column, metadata columns)."""
        return self.core.state.info.schema

    @property
    def dim(self) -> int:
        """Number of components of every vector."""
        return self.core.state.info.dim

    @property
    def metric(self) -> str:
        """Distance metric fixed at creation: ``l2`` (squared), ``cosine`` or ``dot``."""
        return self.core.state.info.metric

    @property
    def format(self) -> str:
        """Segment file format fixed at creation: ``"arrow"`` (Arrow IPC) or ``"lance"``."""
        return self.core.state.info.format

    @property
    def version(self) -> int:
        """Number of the latest published manifest version."""
        return self.core.state.version

    @property
    def embedding(self) -> dict[str, Any] | None:
        """What the table embeds its text with, as its manifest records it: ``name`` and
        ``params`` of the function and ``source_column``; None for a table without one."""
        record = self.core.state.info.embedding
        return None if record is None else copy.deepcopy(record)

    def use_embedding(self, fn: Callable[[list[str]], Any]) -> None:
        """Embed with ``fn`` from now on: the function this table was created with (a plain
        callable must be given again after a reopen; an adapter is made again by itself).
        A function other than the recorded one raises ``InvalidArgumentError``."""
        if self._embedder is None:
            raise InvalidArgumentError(f"table {self.name!r} has no embedding function: only a table created with "
                                       "create_table(..., embedding=fn, source_column=...) embeds its text")
        self._embedder = self._embedder.using(fn)

    @property
    def index_config(self) -> IndexConfig:
        """The table's index config (:class:`omendb.HnswSq` or :class:`omendb.HnswFlat`)."""
        return self.core.state.info.index

    def __repr__(self) -> str:
        return f"<omendb.Table {self.name!r} dim={self.dim} metric={self.metric} rows={self.count()}>"

    # ---------------------------------------------------------------- writes
    def add(self, data: Any, *, fsync: bool | None = None) -> int:
        """Append rows; refuse keys that already exist. Returns the number of rows added.

        ``data``: a pandas/polars DataFrame, pyarrow Table/RecordBatch/RecordBatchReader,
        list of dicts, dict of columns, or a 2-D NumPy array of vectors (ids assigned).
        Returns once the rows are durable (see ``TableOptions.fsync``; ``fsync=False``
        skips this call's sync). In a table with an embedding function, rows without a
        vector get one embedded from their text (before anything is logged).
        """
        writer = self._writable()
        return writer.write(RecordKind.ADD, with_vectors(self._embedder, data, self.vector_column), fsync)

    def upsert(self, data: Any, *, fsync: bool | None = None) -> int:
        """Insert rows, replacing any live row with the same primary key."""
        writer = self._writable()
        return writer.write(RecordKind.UPSERT, with_vectors(self._embedder, data, self.vector_column), fsync)

    def insert(self, data: Any, *, fsync: bool | None = None) -> pa.Array:
        """Like :meth:`add`, but return the primary keys of the new rows (assigned or given)."""
        writer = self._writable()
        return writer.write(RecordKind.ADD, with_vectors(self._embedder, data, self.vector_column), fsync, keys=True)

    def delete(self, ids: Any = None, *, where: str | None = None, fsync: bool | None = None) -> int:
        """Delete rows by primary key, or every row matching the SQL predicate ``where``.

        Returns the number of rows deleted (ids that do not exist are ignored).
        """
        return self._writable().delete(ids, where, fsync)

    # ----------------------------------------------------------------- reads
    def _reading(self, read: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a read (a reader's through its follower, on the newest version)."""
        activity.note()
        self.core.check_open()
        return read(*args, **kwargs) if self._follower is None else self._follower.read(read, *args, **kwargs)

    def search(self, q: Any = None, k: int = 10, *, text: str | None = None, where: str | None = None,
               columns: Sequence[str] | None = None, exact: bool = False, ef: int | None = None,
               recall: float | None = None, vector_weight: float = 1.0, text_weight: float = 1.0) -> pa.Table:
        """Nearest neighbours of ``q``, rows matching ``text``, or both fused.

        Args:
            q: one vector (1-D) -> up to ``k`` rows sorted by ``_distance``; or a 2-D
                array of queries -> up to ``k`` rows per query with a ``_query`` column
                (the query's row number), grouped by query. In a table with an
                embedding function, a string (or a list of strings) is embedded first.
            k: neighbours per query.
            text: words to search for in the columns of the table's text index
                (:meth:`create_text_index`): alone, up to ``k`` rows holding them, best
                BM25 ``_score`` first; with one vector ``q``, a hybrid search: both
                rankings (each ``max(2 * k, 20)`` deep) fused by reciprocal rank fusion,
                ``_relevance_score`` descending, with each row's ``_distance`` and
                ``_score`` (null where that side did not rank it).
            where: SQL predicate over metadata columns, applied before ranking: when
                at least ``k`` rows match, ``k`` rows come back (a text search returns
                only rows holding a query term).
            columns: columns to return (default: all); ``_distance`` is always added.
            exact: force the exact flat scan, bypassing HNSW indexes.
            ef: HNSW candidate list size for this call; larger is slower and more
                accurate. Give ``ef`` or ``recall``, not both.
            recall: the recall@10 to aim for, in (0, 1]: each segment searches with the
                smallest ``ef`` its build measured to reach it (default: the index
                config's ``recall``, 0.95 for :class:`omendb.HnswSq`; without one,
                ``ef_search``).
            vector_weight, text_weight: each side's weight in a hybrid search's fusion
                (``weight / (60 + rank)`` per side; default 1 each).

        Returns:
            A ``pyarrow.Table`` (``.to_pandas()`` / ``polars.from_arrow`` to convert).
        """
        if is_text_query(q):
            q = query_vectors(self._embedder, q, self.name)
        if text is not None:
            return self._reading(self._text_reader.search, q, text, k, where=where, columns=columns, exact=exact,
                                 ef=ef, recall=recall, vector_weight=vector_weight, text_weight=text_weight)
        if q is None:
            raise InvalidArgumentError("search needs a query vector q, text=, or both")
        return self._reading(self._reader.search, q, k, where=where, columns=columns, exact=exact, ef=ef,
                             recall=recall)

    def get(self, ids: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows with the given primary keys, in the order asked; missing ids are skipped."""
        return self._reading(self._reader.get, ids, columns)

    def count(self) -> int:
        """Number of live rows."""
        return self._reading(self._reader.count)

    def to_arrow(self) -> pa.Table:
        """Every live row as one Arrow table (segments memory-mapped, zero copy where possible)."""
        return self._reading(self._reader.to_arrow)

    def stats(self) -> dict[str, Any]:
        """Rows, deleted rows, segments, index state, bytes on disk and version."""
        return self._reading(self._reader.stats)

    def snapshot(self) -> Snapshot:
        """A frozen view of the live rows now (unflushed rows included), for SQL glue."""
        return self._reading(self._text_reader.snapshot)

    def state_token(self) -> tuple:
        """A value that changes whenever the table's visible rows may have changed (cheap)."""
        self._before_read()
        return self._reader.state_token()

    def export(self, path: str | os.PathLike, format: str = "parquet", *, overwrite: bool = False) -> Any:
        """Write every live row (one consistent snapshot) to ``path`` as ``"parquet"``,
        ``"lance"`` (a Lance dataset folder, which LanceDB opens) or ``"arrow"`` (IPC file).
        Returns what was written (path, format, rows, bytes)."""
        return export_table(self, path, format, overwrite=overwrite)

    # ----------------------------------------------------------- maintenance
    def flush(self) -> None:
        """Write the memtable out as a segment and publish a new version now."""
        self._writable()
        self._flusher.flush()

    def compact(self) -> dict[str, Any]:
        """Flush, then merge segments and drop deleted rows now; return when published.

        Every segment with deleted rows is rewritten without them, and segments are
        merged into as few as ``CompactionPolicy.max_rows`` allows. Returns what it did:
        ``segments_before`` (segments, counting the unflushed rows as one),
        ``segments_after``, ``rows_dropped`` (deleted rows removed from segments),
        ``version``.
        """
        self._writable()
        return self._compactor.compact()

    def create_index(self, m: int = 16, ef_construction: int = 200, *, ef_search: int | None = None,
                     min_rows: int | None = None, recall: float | None = None,
                     index: IndexConfig | None = None) -> None:
        """Set the index parameters and (re)build, in the background, every index they change.

        Keeps the table's index type (:class:`omendb.HnswSq` or :class:`omendb.HnswFlat`)
        with the parameters given (``ef_search``, ``min_rows``, ``recall``: unchanged when
        omitted); ``index=`` gives a whole config instead, of either type. Segments with
        at least ``min_rows`` rows get an index; smaller ones are searched exactly, and
        rows not yet in an indexed segment through a quicker-built graph as far as it
        reaches (``fresh.py``). Use :meth:`wait_for_index` to wait.
        """
        self._writable()
        self._indexer.configure(requested_index_config(self.core.state.info.index, m, ef_construction,
                                                       ef_search=ef_search, min_rows=min_rows, recall=recall,
                                                       index=index))

    def create_text_index(self, columns: str | Sequence[str], *, language: str | None = "english",
                          k1: float = 1.5, b: float = 0.75) -> None:
        """Index string ``columns`` for ``search(text=...)`` (BM25; see
        :class:`omendb.TextIndexConfig` for the options), replacing any text index the
        table has. Every segment's text index is built in the background (``wait_for_index``
        waits for them too); rows without one yet are searched from their text directly.
        """
        self._writable()
        config = TextIndexConfig(columns, language=language, k1=k1, b=b)
        config.check_schema(self.core.state.info.schema, self.name)
        self._indexer.configure_text(config)

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Flush the rows added so far, then wait until every segment that should have
        an index (and a text index, when the table has one) has a current one: on return,
        every row added before the call is in an indexed segment (or in one too small to
        need an index).

        Returns True when done, False on timeout (which bounds the wait for builds, not
        the flush itself). Raises ``IndexBuildError`` if a build failed.
        """
        self._writable()
        if len(self.core.state.memtable):
            self._flusher.flush()
        return self._indexer.wait(timeout, self._flusher.wait_for_sealed)

    # -------------------------------------------------------------- versions
    def versions(self) -> list[dict[str, Any]]:
        """Every retained version, oldest first: number, time, what changed, rows, segments."""
        self.core.check_open()
        return list_versions(self.core)

    def checkout(self, version: int) -> "LocalTable":
        """A read-only table of ``version`` as it was published (writes raise ``ReadOnlyError``).

        Rows that were only in the writer's memtable at that time are not part of a
        version. The files of a checkout are kept by ``cleanup()`` while it is open.
        """
        self.core.check_open()
        if isinstance(version, bool) or not isinstance(version, int):
            raise VersionNotFoundError(f"table {self.name!r} has no version {version!r} (versions are integers)")
        # Pinned while it opens: this process's cleanup() cannot remove the version's files
        # before the checkout is registered (from then on it pins them).
        with pinned(self.core.directory, version):
            available = self.core.store.versions()
            if version not in available:
                retained = f"retained: {available[0]}..{available[-1]}" if available else "none retained"
                raise VersionNotFoundError(f"table {self.name!r} has no version {version!r} ({retained})")
            table = LocalTable(self.name, self.core.directory, self._options, None,
                               checkout=self.core.store.load(version), mirror=self.core.mirror)
        if self._embedder is not None and table._embedder is not None:
            table._embedder = self._embedder  # (the same function: a table's embedding never changes)
        return table

    def refresh(self) -> int:
        """Adopt the newest published version (readers; the writer is always current)."""
        self.core.check_open()
        if self._follower is not None:
            self._follower.refresh()
        return self.version

    def cleanup(self, older_than: float | dt.timedelta | None = None, keep_last: int = 1) -> dict[str, int]:
        """Remove old versions and the files only they reference; report what was freed.

        A version is removed when it is not among the ``keep_last`` newest, is older
        than ``older_than`` (seconds or a timedelta; ``None``: any age) and is not held
        by a table open in this process (a ``checkout()``, or a table of a read-only
        database). The newest version is always kept.
        Returns ``versions_removed``, ``files_removed`` and ``bytes_freed``.
        """
        self._writable()
        return cleanup(self.core, older_than, keep_last)

