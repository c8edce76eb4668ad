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


class FormatVersionError(OmenError, IOError):
    """A file written by a newer (or unknown) on-disk format version."""


class NotADatabaseError(OmenError, IOError):
    """A folder that exists, is not empty and is not an omendb database."""


class ReadOnlyError(OmenError, PermissionError):
    """A write on a read-only table (for example a checked-out old version)."""


class ClosedError(OmenError, RuntimeError):
    """Use of a database or table after ``close()``."""


class VersionNotFoundError(OmenError, LookupError):
    """``checkout`` of a version that was never published or has been cleaned up."""
