"""Immutable segment files: Arrow IPC (default) or Lance, chosen by the file's suffix.

Spec: ``formats/segment.md``. An Arrow IPC segment (``.arrow``) holds exactly one
uncompressed record batch so that every column, the vector column included, is one
contiguous buffer that is memory-mapped and viewed as a NumPy array without copying.
A Lance segment (``.lance``, one Lance v2 file written with pylance) is decoded into
memory when first used. Size and CRC-32 of either are recorded in the manifest; the
checksum is verified the first time a process opens the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from ..errors import CorruptFileError, FormatVersionError, MissingDependencyError, MissingFileError, storage_error
from .fileio import ChecksummingWriter, publish_written, verify_file
from .layout import SEGMENT_SUFFIXES as SUFFIXES

__all__ = ["SegmentFileInfo", "write_segment", "open_segment", "read_segment_column", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FORMAT_KEY = b"omendb.format"
_VERSION_KEY = b"omendb.format_version"


@dataclass(frozen=True)
class SegmentFileInfo:
    """What the manifest records about a written segment file."""

    file: str
    rows: int
    bytes: int
    crc32: int


def write_segment(directory: str | os.PathLike, name: str, table: pa.Table, *,
                  patient: Callable[[], bool] | None = None) -> SegmentFileInfo:
    """Write ``table`` as segment ``name`` in ``directory``, durably.

    The file is written under a temporary name, fsynced, renamed into place and the
    directory fsynced, so a crash never leaves a partial file under the final name.
    ``patient``: see :func:`~omendb.storage.fileio.write_back_gradually`.
    """
    directory = Path(directory)
    batch = table.combine_chunks().to_batches(max_chunksize=None)
    metadata = dict(table.schema.metadata or {})
    metadata.update({_FORMAT_KEY: b"segment", _VERSION_KEY: str(FORMAT_VERSION).encode()})
    schema = table.schema.with_metadata(metadata)
    tmp = directory / f".{name}.tmp"
    one_batch = (batch[0] if len(batch) == 1 else pa.concat_batches(batch)) if batch \
        else pa.RecordBatch.from_pylist([], schema=schema)
    crc = None  # (a Lance file is checksummed when published)
    try:
        if name.endswith(SUFFIXES["lance"]):
            _write_lance(tmp, schema, one_batch.replace_schema_metadata(schema.metadata))
        else:
            options = pa.ipc.IpcWriteOptions(compression=None)
            sink = ChecksummingWriter(tmp)  # pyarrow hands it the batch's buffers uncopied
            with pa.PythonFile(sink, mode="w") as file, pa.ipc.new_file(file, schema, options=options) as writer:
                writer.write_batch(one_batch)
            crc = sink.crc32
        size, crc = publish_written(tmp, directory / name, crc32=crc, patient=patient)
    except OSError as exc:  # (a full disk, say): no partial file stays behind to fill it further
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, f"writing segment {name}", directory) from None
    return SegmentFileInfo(name, table.num_rows, size, crc)


def open_segment(path: str | os.PathLike, *, rows: int, size: int, crc32: int | None) -> pa.Table:
    """Memory-map a segment file and return its (zero-copy) Arrow table.

    Checks size, CRC-32 (when given), format tag, version and row count against what
    the manifest recorded, and raises a clear error naming the file on any mismatch.
    """
    path = Path(path)
    verify_file(path, size=size, crc32=crc32, what="segment")
    if path.suffix == SUFFIXES["lance"]:
        table = _read_lance(path)
    else:
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        except FileNotFoundError:  # (removed since it was verified: cleanup of an old version)
            raise MissingFileError(f"{path}: segment file is missing", path) from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptFileError(f"{path}: not a readable Arrow IPC segment: {exc}") from exc
    metadata = table.schema.metadata or {}
    if metadata.get(_FORMAT_KEY) != b"segment":
        raise CorruptFileError(f"{path}: not an omendb segment (no format tag)")
    version = metadata.get(_VERSION_KEY, b"?").decode()
    if version != str(FORMAT_VERSION):
        raise FormatVersionError(
            f"{path}: segment format version {version} is not supported "
            f"(this omendb reads version {FORMAT_VERSION})")
    if table.num_rows != rows:
        raise CorruptFileError(f"{path}: segment has {table.num_rows} rows, manifest says {rows}")
    return table


def _lance_file():
    try:
        import lance.file
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("Lance segments need pylance: pip install 'omendb[lance]'") from exc
    return lance.file


def _write_lance(path: Path, schema: pa.Schema, batch: pa.RecordBatch) -> None:
    with _lance_file().LanceFileWriter(str(path), schema) as writer:
        writer.write_batch(batch)


def _read_lance(path: Path) -> pa.Table:
    """Decode a Lance segment into memory, as one chunk per column (contiguous vectors)."""
    try:
        table = _lance_file().LanceFileReader(str(path)).read_all().to_table()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(f"{path}: not a readable Lance segment: {exc}") from exc
    return table.combine_chunks()


def read_segment_column(path: str | os.PathLike, column: str, *, rows: int, size: int,
                        crc32: int | None) -> pa.ChunkedArray:
    """One column of a segment (e.g. its keys) without decoding the others.

    Arrow IPC segments are mapped, so this only touches that column's pages; a Lance
    segment is read with a column projection. The checksum is verified when given.
    """
    path = Path(path)
    if path.suffix != SUFFIXES["lance"]:
        return open_segment(path, rows=rows, size=size, crc32=crc32).column(column)
    verify_file(path, size=size, crc32=crc32, what="segment")
    try:
        table = _lance_file().LanceFileReader(str(path), columns=[column]).read_all().to_table()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(f"{path}: not a readable Lance segment: {exc}") from exc
    if table.num_rows != rows:
        raise CorruptFileError(f"{path}: segment has {table.num_rows} rows, manifest says {rows}")
    return table.column(column)
