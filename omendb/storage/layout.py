"""What a table's folder holds and how its files are named (``formats/README.md``).

::

    <table>/LOCK                        the writer lock
    <table>/manifests/vNNNNNNNNNN.json  one file per published version
    <table>/wal/NNNN...NNNN.wal         the write-ahead log (first record's seq, 20 digits)
    <table>/segments/                   segments, their deletion files and index files
    <table>/salvage/<UTC time>/         set aside by a salvage

Every file omendb puts in ``segments/`` has a name made here, so open removes only
files it can tell are its own.
"""

from __future__ import annotations

import base64
import os
import re

import pyarrow as pa

__all__ = ["MANIFESTS", "SEGMENTS", "WAL", "LOCK", "SALVAGE", "SEGMENT_SUFFIXES", "segment_file_name",
           "merged_segment_file_name", "deletions_file_name", "index_file_name", "text_file_name", "is_omendb_segment_file",
           "deletions_version", "schema_to_text", "schema_from_text"]

MANIFESTS, SEGMENTS, WAL, LOCK, SALVAGE = "manifests", "segments", "wal", "LOCK", "salvage"

#: Segment file suffix of each segment format.
SEGMENT_SUFFIXES = {"arrow": ".arrow", "lance": ".lance"}

# flushed segments seg-<last seq>-<random>, merged ones seg-m<random>; their deletion
# files <segment>.<version>.del, index files <segment>.<random>.hnsw and text index
# files <segment>.<random>.text; and the
# temporary names all of them are written under (.<name>.tmp, .<name>.tmp-<pid>)
_SEGMENT_STEM = r"seg-(?:\d{10}-[0-9a-f]{8}|m[0-9a-f]{12})"
_SEGMENT_FILE = re.compile(
    rf"\.?(?:{_SEGMENT_STEM}\.(?:arrow|lance)|{_SEGMENT_STEM}\.\d{{10}}\.del|{_SEGMENT_STEM}\.[0-9a-f]{{8}}\.(?:hnsw|text))"
    r"(?:\.tmp(?:-\d+)?)?")
_DELETIONS_VERSION = re.compile(r"\.(\d{10})\.del")


def segment_file_name(last_seq: int, segment_format: str) -> str:
    """A flushed segment holding the log's records up to ``last_seq``."""
    return f"seg-{last_seq:010d}-{os.urandom(4).hex()}{SEGMENT_SUFFIXES[segment_format]}"


def merged_segment_file_name(segment_format: str) -> str:
    """A segment made by compaction."""
    return f"seg-m{os.urandom(6).hex()}{SEGMENT_SUFFIXES[segment_format]}"


def _stem(segment_file: str) -> str:
    return segment_file.rsplit(".", 1)[0]


def deletions_file_name(segment_file: str, version: int) -> str:
    """The deletion file of ``segment_file`` that version ``version`` publishes."""
    return f"{_stem(segment_file)}.{version:010d}.del"


def index_file_name(segment_file: str) -> str:
    """A new index file of ``segment_file``."""
    return f"{_stem(segment_file)}.{os.urandom(4).hex()}.hnsw"


def text_file_name(segment_file: str) -> str:
    """A new text index file of ``segment_file``."""
    return f"{_stem(segment_file)}.{os.urandom(4).hex()}.text"


def deletions_version(name: str) -> int | None:
    """The version a deletion file's name says published it (None: not a deletion file)."""
    match = _DELETIONS_VERSION.search(name)
    return int(match.group(1)) if match and is_omendb_segment_file(name) else None


def is_omendb_segment_file(name: str) -> bool:
    """True for a name omendb gives files in ``segments/`` (a user's stray file is never one)."""
    match = _SEGMENT_FILE.fullmatch(name)
    return match is not None and (name.startswith(".") == (".tmp" in name))


def schema_to_text(schema: pa.Schema) -> str:
    """An Arrow schema as text (base64 of its IPC serialisation), as manifests and the wire carry it."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    """Inverse of :func:`schema_to_text`."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
