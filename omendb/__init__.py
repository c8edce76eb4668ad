"""omendb: an Arrow-native, embedded-first vector store.

>>> import omendb
>>> db = omendb.open("./vectors.db")
>>> ids = db.add_batch(vectors)                      # 2-D array -> ids (table "vectors")
>>> hits = db.search(query, k=10)                    # Arrow table with id and _distance
>>> tbl = db.create_table("docs", data=df)          # or: tables with metadata columns
>>> tbl.search(query, k=10, where="lang = 'en'").to_pandas()
"""

from __future__ import annotations

import datetime as dt
import os

from .api import Table
from .database import Database, open_database
from .duck import SqlError, duckdb_connect
from .embedding import Embedding, FastEmbedEmbedding, HashEmbedding, SentenceTransformerEmbedding
from .errors import (ArgumentTypeError, AuthenticationError, BackgroundTaskError, ClosedError, CommitConflictError,
                     CorruptFileError,
                     DimensionError, DiskFullError, DuplicateKeyError, EmbeddingError, FilterError,
                     FormatVersionError,
                     IndexBuildError, InvalidArgumentError, InvalidNameError, InvalidVectorError,
                     MissingDependencyError, MissingFileError, MissingVersionError, NotADatabaseError, ObjectStoreError, OmenError,
                     ReadOnlyError, SchemaError, SourceError, StorageError, TableExistsError, TableLockedError,
                     TableNotFoundError, VersionNotFoundError, WalDamageError)
from .index.configs import HnswConfig, HnswFlat, HnswSq
from .index.text import TextIndexConfig
from .remote import connect, connect_async
from .table import CompactionPolicy, TableOptions

__version__ = "0.1.0"

__all__ = [
    "open", "connect", "connect_async", "duckdb_connect", "salvage", "Database", "Table", "TableOptions",
    "HnswSq", "HnswFlat", "HnswConfig", "TextIndexConfig", "CompactionPolicy", "__version__",
    "Embedding", "HashEmbedding", "SentenceTransformerEmbedding", "FastEmbedEmbedding", "EmbeddingError",
    "OmenError", "SchemaError", "DimensionError", "InvalidVectorError", "DuplicateKeyError",
    "TableNotFoundError", "TableExistsError", "InvalidNameError", "FilterError", "CorruptFileError",
    "FormatVersionError", "NotADatabaseError", "ReadOnlyError", "ClosedError", "TableLockedError",
    "VersionNotFoundError", "InvalidArgumentError", "ArgumentTypeError", "StorageError", "DiskFullError",
    "WalDamageError", "MissingVersionError", "MissingFileError", "MissingDependencyError", "IndexBuildError",
    "BackgroundTaskError", "SourceError", "SqlError", "AuthenticationError", "ObjectStoreError",
    "CommitConflictError",
]


def open(path: str | os.PathLike, *, fsync: bool = True, memtable_bytes: int = 64 << 20,  # noqa: A001
         build_indexes: bool = True, compaction: CompactionPolicy | bool = True, read_only: bool = False,
         lock_timeout: float = 0.0, keep_versions_for: float | dt.timedelta | None = 60.0,
         dim: int | None = None, metric: str = "cosine", storage_options: dict | None = None,
         cache_dir: str | os.PathLike | None = None, cache_bytes: int | None = None,
         poll_interval: float = 5.0) -> Database:
    """Open the omendb database in folder ``path``, creating it if missing.

    Args:
        path: the database folder, or ``s3://bucket/prefix`` for a database in an
            S3-compatible object store (needs ``pip install 'omendb[s3]'``; see the
            object-storage guide): the same API, with the store as the truth and a
            local folder as its working copy.
        fsync: fsync each write's log record before ``add``/``upsert``/``delete``
            return (default). ``False`` is for bulk loads: writes then survive a
            crash of the process but not of the machine until ``flush()``/``close()``.
        memtable_bytes: size at which buffered rows are flushed to a segment file.
        build_indexes: build HNSW indexes of large segments on a background thread
            (default). ``False`` leaves segments unindexed until ``create_index``.
        compaction: the background compaction policy (``True``: the default policy,
            ``False``: off; ``Table.compact()`` works either way).
        read_only: open for reading only: no writer lock is taken, so any number of
            reader processes can open a table that one writer process writes. Reads
            see the newest *published* version (refreshed before each read); rows
            still in the writer's memtable appear once it flushes.
        lock_timeout: seconds to wait for another process's writer lock of a table
            before raising ``TableLockedError`` (default: fail at once).
        keep_versions_for: how long an old version stays readable (``checkout()``)
            before the writer removes it and the files only it references, in the
            background: seconds or a ``timedelta`` (default 60 s; ``None``: keep every
            version until ``Table.cleanup()``).
        dim: the dimension of the default table ``vectors`` that ``db.add_batch(...)``
            creates (default: the first batch's).
        metric: that default table's metric (default: cosine).
        storage_options: for ``s3://``: ``endpoint_url``, ``region``, ``key``,
            ``secret``, ``token``, ``anon``, ``connect_timeout``, ``read_timeout``,
            ``max_attempts`` (fsspec's, pyarrow's and boto3's names are all accepted;
            credentials default to the usual AWS environment and files).
        cache_dir: for ``s3://``: the local folder tables are worked on in (default
            ``~/.cache/omendb/<hash of the URI>``).
        cache_bytes: for ``s3://`` readers: the most the cache keeps beyond the files
            of the version being read (default: no bound).
        poll_interval: for ``s3://`` readers: seconds between looks for a new version
            before a read (``Table.refresh()`` looks at once).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a folder path (str or os.PathLike), got {type(path).__name__}")
    if isinstance(compaction, bool):
        compaction = CompactionPolicy(enabled=compaction)
    options = TableOptions(fsync=fsync, memtable_bytes=memtable_bytes, build_indexes=build_indexes,
                           compaction=compaction, read_only=read_only, lock_timeout=lock_timeout,
                           keep_versions_for=keep_versions_for)
    return open_database(path, options, dim=dim, metric=metric, storage_options=storage_options,
                         cache_dir=cache_dir, cache_bytes=cache_bytes, poll_interval=poll_interval)


def salvage(path: str | os.PathLike, table: str | None = None) -> list[dict]:
    """Reopen tables whose write-ahead log is damaged or whose newest manifest is missing.

    Such a table refuses to open (:class:`WalDamageError`, :class:`MissingVersionError`)
    rather than silently lose acknowledged writes. Salvage keeps every logged write that
    still verifies, publishes the result as a new version, and first copies the original
    log (and moves files no version references) to ``<table>/salvage/<time>/``. Writes
    only in damaged bytes or in a missing version are lost; each report says which.

    ``table``: the table to salvage (default: every table that fails to open for that
    reason). Returns one report per salvaged table (see :meth:`Database.salvage`); a
    table that could not be salvaged (its newest manifest is damaged, say) gets a report
    with ``salvaged: False`` and the ``error``, and the others are still salvaged.
    """
    reports = []
    with open(path, compaction=False) as db:
        for name in [table] if table is not None else db.table_names():
            if table is None:
                try:
                    db.open_table(name)
                    continue
                except (WalDamageError, MissingVersionError):
                    pass
                except OmenError as exc:
                    reports.append({"table": name, "salvaged": False, "error": str(exc)})
                    continue
            reports.append({**db.salvage(name), "salvaged": True})
    return reports
