"""Exceptions raised by omendb.

Every error omendb raises on purpose derives from :class:`OmenError`, so callers can
catch one type; the subclasses also derive from the closest built-in exception
(``ValueError``, ``KeyError``, ...) so ordinary ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "OmenError",
    "SchemaError",
    "DimensionError",
    "InvalidVectorError",
    "DuplicateKeyError",
    "TableNotFoundError",
    "TableExistsError",
    "InvalidNameError",
    "FilterError",
    "CorruptFileError",
    "FormatVersionError",
    "NotADatabaseError",
    "ReadOnlyError",
    "ClosedError",
    "VersionNotFoundError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "StorageError",
    "DiskFullError",
    "ObjectStoreError",
    "CommitConflictError",
    "WalDamageError",
    "MissingVersionError",
    "MissingDependencyError",
    "IndexBuildError",
    "EmbeddingError",
    "BackgroundTaskError",
    "SourceError",
    "MissingFileError",
    "TableLockedError",
    "AuthenticationError",
]


class OmenError(Exception):
    """Base class of every error omendb raises."""


class SchemaError(OmenError, ValueError):
    """Data does not fit the table's schema: unknown, missing or mistyped columns."""


class DimensionError(SchemaError):
    """A vector has the wrong number of components for the table."""


class InvalidVectorError(OmenError, ValueError):
    """A vector holds NaN/inf, nulls, non-numeric or ragged values."""


class DuplicateKeyError(OmenError, ValueError):
    """A primary key already exists (``add``) or repeats within one call."""


class TableNotFoundError(OmenError, KeyError):
    """The named table does not exist in the database."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TableExistsError(OmenError, ValueError):
    """``create_table`` of a name that exists, without ``exist_ok=True``."""


class InvalidNameError(OmenError, ValueError):
    """A table name that is empty, too long or contains path characters."""


class FilterError(OmenError, ValueError):
    """A ``where`` predicate that DuckDB cannot evaluate over the table's columns."""


class CorruptFileError(OmenError, IOError):
    """A file failed its checksum or could not be parsed; the message names it."""


class MissingFileError(CorruptFileError):
    """A file a published version references is not there (``path`` names it).

    A reader following a writer meets it when the writer's ``cleanup()`` removed a
    version's files between the reader's listing and its first read of them.
    """

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class FormatVersionError(OmenError, IOError):
    """A file written by a newer (or unknown) on-disk format version."""


class NotADatabaseError(OmenError, IOError):
    """A folder that exists, is not empty and is not an omendb database."""


class TableLockedError(OmenError, RuntimeError):
    """Another process (or another open of the same database) holds the table's writer lock."""


class AuthenticationError(OmenError, PermissionError):
    """The server refused the call: missing or wrong bearer token."""


class ReadOnlyError(OmenError, PermissionError):
    """A write on a read-only table (for example a checked-out old version)."""


class ClosedError(OmenError, RuntimeError):
    """Use of a database or table after ``close()``."""


class VersionNotFoundError(OmenError, LookupError):
    """``checkout`` of a version that was never published or has been cleaned up."""


class InvalidArgumentError(OmenError, ValueError):
    """An argument with a value omendb cannot use (``k=0``, an unknown metric, ...)."""


class ArgumentTypeError(OmenError, TypeError):
    """An argument of a type omendb does not accept (the message says which types it does)."""


class StorageError(OmenError, OSError):
    """The operating system refused a file operation; the message names the path.

    ``errno`` and ``filename`` are those of the underlying ``OSError``.
    """

    def __str__(self) -> str:  # OSError would print "[Errno n] strerror: filename" instead
        return str(self.args[0]) if self.args else ""


class DiskFullError(StorageError):
    """No space left on the device (or quota exceeded) while writing the named file.

    A write refused this way changed nothing; free space and retry.
    """


class ObjectStoreError(StorageError):
    """An object store (``s3://...``) refused or did not answer a request; the message
    names the store, the object and what was being done. Safe requests were retried
    with backoff first."""


class CommitConflictError(OmenError, RuntimeError):
    """Another writer committed first (a table on object storage has one writer at a
    time): this writer's change was not acknowledged and it takes no more writes.
    Reopen the database to continue from the winner's state."""


class WalDamageError(CorruptFileError):
    """A write-ahead log file is damaged where acknowledged records live.

    The table refuses to open rather than silently drop acknowledged rows. The
    message names the file and the records affected; ``omendb salvage`` (or
    :func:`omendb.salvage`) keeps every record that can still be verified.
    """


class MissingVersionError(CorruptFileError):
    """The newest manifest version(s) of a table are missing: opening would roll back.

    Restore the missing manifest file(s), or accept the rollback with ``omendb salvage``.
    """


class SourceError(OmenError, ValueError):
    """An input (a file, folder or stream to ingest) that cannot be read as the format it claims."""


class MissingDependencyError(OmenError, ImportError):
    """An optional package a feature needs is not installed (the message says which extra)."""


class EmbeddingError(OmenError, RuntimeError):
    """A table's embedding function is missing, failed, or returned something that is not
    one vector per text; the message names the function and the table."""


class IndexBuildError(OmenError, RuntimeError):
    """Building a segment's index failed; the segment is searched exactly meanwhile."""


class BackgroundTaskError(OmenError, RuntimeError):
    """A background flush, build or merge failed; the message says which and why."""


def storage_error(exc: OSError, doing: str, path: object = None) -> StorageError:
    """The omendb error for an ``OSError`` raised while ``doing`` something to ``path``.

    A full disk (``ENOSPC``/``EDQUOT``) becomes :class:`DiskFullError` and says so.
    """
    import errno as _errno

    where = path if path is not None else exc.filename
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        kind, text = DiskFullError, f"no space left on the device while {doing}"
    else:
        kind, text = StorageError, f"{doing} failed: {exc.strerror or exc}"
    message = f"{where}: {text}" if where is not None else text
    error = kind(message)
    error.errno, error.strerror = exc.errno, exc.strerror
    error.filename = None if where is None else str(where)
    return error


def describe(exc: BaseException) -> str:
    """An exception as a warning shows it: its message, or its type when it has none."""
    text = str(exc)
    if isinstance(exc, OmenError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
