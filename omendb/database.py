"""A database: a folder of tables, opened with :func:`omendb.open`."""

from __future__ import annotations

import atexit
import errno
import json
import os
import re
import shutil
import threading
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from .convert import to_arrow_table, vector_type
from .embedding import embedding_record
from .errors import (ClosedError, CorruptFileError, DimensionError, FormatVersionError, InvalidArgumentError,
                     InvalidNameError, MissingDependencyError, NotADatabaseError, ReadOnlyError, SchemaError,
                     TableExistsError, TableLockedError, TableNotFoundError, describe, storage_error)
from .index.configs import IndexConfig, check_index_config
from .shorthand import ShorthandMixin
from .storage.fileio import atomic_write, fsync_dir
from .storage.layout import LOCK, MANIFESTS
from .storage.locking import WriterLock
from .storage.manifest import ManifestStore
from .storage.mirror import DatabaseRoot
from .storage.objectstore import is_store_uri
from .table import LocalTable, TableOptions, Workers, discard_table_folder, new_table_manifest
from .table.embedder import TableEmbedder
from .table.options import new_table_schema

__all__ = ["Database", "open_database", "use_sql_engine", "database_marker"]

MARKER = "omendb.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}")


def open_database(path: str | os.PathLike, options: TableOptions, *, dim: int | None = None, metric: str = "cosine",
                  storage_options: dict | None = None, cache_dir: str | os.PathLike | None = None,
                  cache_bytes: int | None = None, poll_interval: float = 5.0) -> "Database":
    """The database at a folder or an ``s3://`` URI (:func:`omendb.open` documents the arguments)."""
    if not is_store_uri(path):
        if storage_options is not None or cache_dir is not None or cache_bytes is not None:
            raise InvalidArgumentError("storage_options, cache_dir and cache_bytes are for s3:// databases; "
                                       f"{os.fspath(path)!r} is a local folder")
        return Database(path, options, dim=dim, metric=metric)
    root = DatabaseRoot.open(str(path), storage_options=storage_options, cache_dir=cache_dir,
                             cache_bytes=cache_bytes, poll_interval=poll_interval, read_only=options.read_only,
                             marker=database_marker())
    return Database(root.local_path, options, dim=dim, metric=metric, root=root)


def database_marker() -> bytes:
    """The bytes of a database's marker file (and of its marker object in a store)."""
    return json.dumps({"format": "omendb.database", "format_version": FORMAT_VERSION}).encode()


def _is_name(name: Any) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _check_name(name: Any) -> str:
    if not _is_name(name):
        raise InvalidNameError(
            f"invalid table name {name!r}: use 1-128 letters, digits, '_' or '-' "
            "(no path characters, not starting with '-')")
    return name


#: Makes the SQL session of a database (``omendb.duck`` sets it: SQL is a face above the
#: database, which only knows it can ask for one).
_SQL_ENGINE: Callable[["Database"], Any] | None = None


def use_sql_engine(factory: Callable[["Database"], Any]) -> None:
    """Set what ``Database.sql`` runs statements with: ``factory(db)`` returns an object
    with ``run(query, params)`` and ``close()``."""
    global _SQL_ENGINE
    _SQL_ENGINE = factory


#: Databases not yet closed. At interpreter exit they are closed (memtables flushed,
#: background index builds and merges cancelled, threads joined) before Python tears
#: down its daemon threads: a worker thread inside faiss or DuckDB at that point would
#: otherwise be unwound through C++ frames and abort the process.
_OPEN: "weakref.WeakSet[Database]" = weakref.WeakSet()


@atexit.register
def _close_open_databases() -> None:
    for db in list(_OPEN):
        try:
            db.close()
        except Exception as exc:  # exit must go on; the WAL still holds every acknowledged write
            warnings.warn(f"omendb: closing {db.path} at exit failed: {describe(exc)}", RuntimeWarning, stacklevel=1)


def _embedded_start(name: str, embedding: Any, source_column: Any, data: pa.Table | None, dim: int | None,
                    schema: pa.Schema | None, id_column: str, vector_column: str
                    ) -> tuple[dict[str, Any], pa.Table | None, int | None, pa.Schema | None]:
    """A new table's embedding record, its first rows with their vectors embedded, and the
    dim and schema of an empty table (its source column a string column)."""
    if embedding is None:
        raise InvalidArgumentError("source_column= names the column an embedding function embeds: give embedding=")
    if not isinstance(source_column, str):
        raise InvalidArgumentError(f"embedding= needs source_column=, the name of the string column it embeds "
                                   f"(got {source_column!r})")
    if source_column in (id_column, vector_column):
        raise InvalidArgumentError(f"source_column {source_column!r} is the table's "
                                   f"{'key' if source_column == id_column else 'vector'} column")
    record = {**embedding_record(embedding), "source_column": source_column}
    embedder = TableEmbedder(name, record, vector_column, dim, embedding)
    if data is not None:
        if source_column in data.column_names:
            _check_source_column(data.schema, source_column)
        filled = embedder.fill(data)
        kind = filled.schema.field(vector_column).type
        if dim is None and pa.types.is_fixed_size_list(kind):  # (zero rows tell no dimension by themselves)
            dim = kind.list_size
        return record, filled, dim, schema
    made = embedder.probe_dim()
    if schema is not None and vector_column in schema.names and pa.types.is_fixed_size_list(
            schema.field(vector_column).type):
        dim = dim or schema.field(vector_column).type.list_size
    if dim is not None and dim != made:
        raise DimensionError(f"the embedding function makes vectors of {made} components, but the table would have "
                             f"dim {dim}")
    if schema is None:
        schema = pa.schema([pa.field(id_column, pa.int64(), nullable=False),
                            pa.field(vector_column, vector_type(made), nullable=False),
                            pa.field(source_column, pa.string())])
    return record, None, made, schema


def _check_source_column(schema: pa.Schema, source_column: str) -> None:
    if source_column not in schema.names:
        raise SchemaError(f"source_column {source_column!r} is not a column of the table ({', '.join(schema.names)})")
    kind = schema.field(source_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SchemaError(f"source_column {source_column!r} must be a string column to embed, got {kind}")


class Database(ShorthandMixin):
    """A folder holding omendb tables. Thread-safe; use as a context manager.

    Besides the table API it offers the two-line shorthand ``add_batch`` / ``search`` /
    ``delete`` / ``get`` / ``count`` on a default table named ``vectors``.
    """

    def __init__(self, path: str | os.PathLike, options: TableOptions, *, dim: int | None = None,
                 metric: str = "cosine", root: DatabaseRoot | None = None) -> None:
        # ``root``: the database is in an object store, and ``path`` the local folder its
        # tables are worked on in (their files a cache of the store's)
        self._root = root
        self.uri = root.uri if root is not None else None
        self.path = Path(path)
        self._where = self.uri or str(self.path)  # (what error messages name)
        self._default_dim, self._default_metric = dim, metric
        self._options = options
        self._tables: dict[str, LocalTable] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._open_folder()
        self._workers = None if options.read_only else Workers()
        self._sql: Any = None  # the SQL session, made on first use by the DuckDB glue
        _OPEN.add(self)

    def _open_folder(self) -> None:
        marker = self.path / MARKER
        if self.path.exists() and not self.path.is_dir():
            raise NotADatabaseError(f"{self.path}: is a file, not an omendb database folder")
        if marker.exists():
            try:
                info = json.loads(marker.read_text())
            except ValueError as exc:
                raise CorruptFileError(f"{marker}: cannot be parsed: {exc}") from None
            if info.get("format") != "omendb.database":
                raise NotADatabaseError(f"{marker}: not an omendb database marker")
            if info.get("format_version") != FORMAT_VERSION:
                raise FormatVersionError(
                    f"{marker}: database format version {info.get('format_version')} is not supported "
                    f"(this omendb reads version {FORMAT_VERSION})")
            if not self._options.read_only:
                self._remove_leftovers()
            return
        if self._options.read_only and self._root is None:  # (in a store, the folder is a reader's cache)
            raise NotADatabaseError(f"{self.path}: no omendb database here to open read-only (no {MARKER})")
        if self.path.exists() and any(self.path.iterdir()):
            raise NotADatabaseError(
                f"{self.path}: folder is not empty and is not an omendb database (no {MARKER})")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, database_marker())

    def _remove_leftovers(self) -> None:
        """Finish what a crash interrupted: half-created and half-dropped tables.

        A table being created holds the writer lock of its staging folder, so the
        staging folder of a live ``create_table`` in another process is left alone.
        """
        for entry in os.listdir(self.path):
            if entry.startswith(".dropped-"):
                shutil.rmtree(self.path / entry, ignore_errors=True)
            elif entry.startswith(".creating-") and (self.path / entry).is_dir():
                try:
                    lock = WriterLock(self.path / entry / LOCK, entry)
                except (TableLockedError, CorruptFileError):
                    continue  # being created right now (or not ours to judge)
                try:
                    shutil.rmtree(self.path / entry, ignore_errors=True)
                finally:
                    lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"database {self._where} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._options.read_only:
            raise ReadOnlyError(f"database {self._where} was opened read_only=True")

    @property
    def location(self) -> str:
        """Where the database is: its folder, or its ``s3://`` URI."""
        return self._where

    # ----------------------------------------------------------------- tables
    def table_names(self) -> list[str]:
        """Names of the tables, sorted."""
        self._check_open()
        if self._root is not None:
            return self._root.table_names()
        names = []
        for entry in sorted(os.listdir(self.path)):
            if _is_name(entry) and ManifestStore(self.path / entry / MANIFESTS).versions():
                names.append(entry)
        return names

    def __contains__(self, name: object) -> bool:
        return _is_name(name) and name in self.table_names()

    def create_table(
        self,
        name: str,
        data: Any = None,
        *,
        dim: int | None = None,
        metric: str = "l2",
        schema: pa.Schema | None = None,
        id_column: str = "id",
        vector_column: str = "vector",
        format: str = "arrow",
        exist_ok: bool = False,
        index: IndexConfig | None = None,
        embedding: Callable[[list[str]], Any] | None = None,
        source_column: str | None = None,
    ) -> LocalTable:
        """Create a table, from ``data`` (schema inferred) or empty (``dim`` or ``schema``).

        Args:
            name: table name (letters, digits, ``_``, ``-``).
            data: optional first rows, any input ``Table.add`` accepts.
            dim: vector dimension of an empty table.
            metric: ``"l2"`` (squared Euclidean, default), ``"cosine"`` or ``"dot"``.
            schema: explicit Arrow schema; its vector column may be a fixed-size list
                of floats or a list (then ``dim`` is required).
            id_column: primary key column (int64 or string); assigned when absent.
            vector_column: the vector column's name.
            format: segment file format: ``"arrow"`` (Arrow IPC, memory-mapped, the
                default) or ``"lance"`` (Lance v2 files, needs pylance; decoded into
                memory when first searched).
            exist_ok: return the existing table instead of raising ``TableExistsError``.
            index: the index config: :class:`omendb.HnswSq` (default: quantized graphs,
                exact re-ranking) or :class:`omendb.HnswFlat`; change it later with
                ``Table.create_index``.
            embedding: a function from a list of strings to one vector per string (any
                callable, or an adapter: :class:`omendb.SentenceTransformerEmbedding`,
                :class:`omendb.FastEmbedEmbedding`, :class:`omendb.HashEmbedding`). Rows
                added without vectors are then embedded from ``source_column``, and
                ``search("some words")`` embeds the query. Its name and parameters are
                recorded in the table's manifest (``Table.embedding``).
            source_column: the string column ``embedding`` embeds (required with it;
                an empty table without ``schema`` gets it as a string column).
        """
        self._check_writable()
        _check_name(name)
        if format not in ("arrow", "lance"):
            raise InvalidArgumentError(f"format must be 'arrow' or 'lance', got {format!r}")
        if format == "lance":
            try:
                import lance.file  # noqa: F401  (fail early, with a clear message)
            except ImportError:
                raise MissingDependencyError("format='lance' needs pylance: pip install 'omendb[lance]'") from None
        if data is not None:  # once: a RecordBatchReader can be read only once
            data = to_arrow_table(data, vector_column)
        record = None
        if exist_ok and name in self.table_names():  # (before embedding anything: the rows are not added)
            return self._existing(name, embedding, source_column)
        if embedding is not None or source_column is not None:
            record, data, dim, schema = _embedded_start(name, embedding, source_column, data, dim, schema,
                                                        id_column, vector_column)
        with self._lock:
            if name in self.table_names():
                if exist_ok:
                    return self._existing(name, embedding, source_column)
                raise TableExistsError(f"table {name!r} already exists in {self._where}")
            target = self.path / name
            if self._root is None and os.path.lexists(target):
                raise TableExistsError(
                    f"{target} exists but holds no omendb table (no manifests); omendb leaves it alone: "
                    "remove or rename it, or choose another table name")
            if index is not None:
                check_index_config(index)
            table_schema, auto_ids = new_table_schema(data, dim, schema, id_column, vector_column)
            if record is not None:
                _check_source_column(table_schema, source_column)
            manifest = new_table_manifest(table_schema, id_column=id_column, vector_column=vector_column,
                                          metric=metric, auto_ids=auto_ids, index=index, format=format,
                                          embedding=record)
            try:
                self._create_folder(name, manifest)
            except TableExistsError:
                if exist_ok and name in self.table_names():  # another process won the race
                    return self._existing(name, embedding, source_column)
                raise
            table = self.open_table(name, embedding=embedding)
        if data is not None:
            try:
                table.add(data)
            except BaseException:
                self.drop_table(name)
                raise
        return table

    def _existing(self, name: str, embedding: Any, source_column: str | None) -> LocalTable:
        """``create_table(..., exist_ok=True)`` of a table that exists: it, checked against
        the embedding asked for."""
        table = self.open_table(name, embedding=embedding)
        recorded = table.embedding
        if source_column is not None and (recorded is None or recorded["source_column"] != source_column):
            raise InvalidArgumentError(f"table {name!r} exists and embeds "
                                       f"{'nothing' if recorded is None else repr(recorded['source_column'])}, "
                                       f"not {source_column!r}")
        return table

    def _create_folder(self, name: str, manifest: Any) -> None:
        """Publish a new table's folder atomically: staged under a hidden name, then renamed.

        The staging folder holds its own writer lock until the rename, so another
        process's leftover cleanup never removes it; a lost race with another
        ``create_table`` of the same name raises :class:`TableExistsError` and leaves
        nothing behind.
        """
        if self._root is not None:  # (the store's conditional write is the atomic step)
            self._root.table(name).create(manifest)
            return
        staging = self.path / f".creating-{name}-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
            lock = WriterLock(staging / LOCK, name)
        except OSError as exc:
            raise storage_error(exc, "creating a table folder", staging) from None
        try:
            try:
                ManifestStore(staging / MANIFESTS).publish(manifest)
                os.rename(staging, self.path / name)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise TableExistsError(f"table {name!r} already exists in {self._where} "
                                           "(created by another process meanwhile)") from None
                raise storage_error(exc, f"creating table {name!r}", self.path / name) from None
            fsync_dir(self.path)
        finally:
            lock.release()
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def open_table(self, name: str, *, embedding: Callable[[list[str]], Any] | None = None) -> LocalTable:
        """Open an existing table (the same object on every call).

        ``embedding``: the table's embedding function, for a table created with a plain
        callable (see ``Table.embedding`` for what it was; an adapter is made again from
        the record by itself).
        """
        self._check_open()
        _check_name(name)
        with self._lock:
            table = self._tables.get(name)
            if table is None or table.closed:
                if name not in self.table_names():
                    raise TableNotFoundError(f"table {name!r} does not exist in {self._where}")
                table = LocalTable(name, self.path / name, self._options, self._workers, owner=self,
                                   mirror=None if self._root is None else self._root.table(name))
                self._tables[name] = table
            if embedding is not None:
                table.use_embedding(embedding)
            return table

    def salvage(self, name: str) -> dict[str, Any]:
        """Open table ``name`` although its log is damaged or a manifest version is missing.

        Keeps every write-ahead-log record that still verifies (a record after a loss
        is applied as an upsert, so the newest logged state of each key it touches
        wins), publishes the result as a new version, and copies the original log and
        moves unreferenced files to ``<table>/salvage/<time>/`` first. Writes that were
        only in damaged bytes or in a missing version are lost; the report says which.
        Returns ``table``, ``records_kept``, ``rows_kept``, ``lost`` (one line per loss),
        ``copies`` (the folder) and ``version``; the table is open afterwards.
        """
        self._check_writable()
        _check_name(name)
        if self._root is not None:
            raise InvalidArgumentError(f"salvage works on a local folder; {self.uri} is in an object store, whose "
                                       "log records are checked as they are written")
        with self._lock:
            open_here = self._tables.get(name)
            if open_here is not None and not open_here.closed:
                raise InvalidArgumentError(f"table {name!r} is open, so its log is sound: salvage is for a table "
                                           "that fails to open with WalDamageError or MissingVersionError")
            if name not in self.table_names():
                raise TableNotFoundError(f"table {name!r} does not exist in {self._where}")
            table = LocalTable(name, self.path / name, self._options, self._workers, owner=self, salvage=True)
            self._tables[name] = table
            return dict(table.salvage_report)

    def drop_table(self, name: str) -> None:
        """Delete a table and all its files."""
        self._check_writable()
        _check_name(name)
        with self._lock:
            if name not in self.table_names():
                raise TableNotFoundError(f"table {name!r} does not exist in {self._where}")
            table = self._tables.pop(name, None)
            if self._root is not None:
                if table is not None and not table.closed:
                    table.close(discard=True)
                self._root.table(name).drop()
            elif table is not None and not table.closed:
                table.close(discard=True)  # stops its background work; drops the folder under its lock
            else:  # not open here: a writer elsewhere holds the lock, and then nothing changes
                discard_table_folder(self.path / name, name, lock_timeout=self._options.lock_timeout)

    def sql(self, query: str, params: Any = None) -> Any:
        """Run SQL with omendb's functions (``omen_knn``, ``omen_text``, ``omen_hybrid``, ``omen_scan``) here.

        Tables are re-registered first if they changed, so the statement sees every
        acknowledged write. Returns a DuckDB relation (``.fetchall()``, ``.arrow()``,
        ``.df()``, ``.pl()``; see ``omendb.duck.SqlRelation``), or None for a statement
        without rows. A statement DuckDB refuses raises ``omendb.SqlError`` (also a
        ``duckdb.Error``), when it is bound or when its rows are fetched.
        """
        self._check_open()
        if _SQL_ENGINE is None:
            raise MissingDependencyError("SQL needs omendb's DuckDB glue: import omendb (not only omendb.database)")
        with self._lock:
            if self._sql is None:
                self._sql = _SQL_ENGINE(self)
            return self._sql.run(query, params)

    def __getitem__(self, name: str) -> LocalTable:
        return self.open_table(name)

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Flush and close every open table."""
        if self._closed:
            return
        with self._lock:
            errors = []
            for table in self._tables.values():
                try:
                    table.close()
                except Exception as exc:  # close the rest, then report
                    errors.append(exc)
            self._tables.clear()
            self._closed = True
            _OPEN.discard(self)
            if self._sql is not None:
                self._sql.close()
            if self._workers is not None:
                self._workers.close()
        if errors:
            raise errors[0]

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<omendb.Database {self._where!r}>"


