"""Tables: a state with one owner, and the collaborators that read, write and maintain it.

``state`` (the state and its one publish path), ``reader`` (queries over a state),
``writer`` (validation, WAL, memtable), ``flusher`` (memtable to segment),
``indexer`` (HNSW builds), ``compactor`` (merges racing safely with writes),
``versions`` (listing, following, cleanup), ``discard`` (removing a table's folder),
``recovery`` (what the log replays on open, salvage), and ``table`` (``LocalTable``, which wires them).
"""

from .discard import discard_table_folder
from .options import MAX_DIM, CompactionPolicy, TableOptions, new_table_manifest
from .table import LocalTable
from .workers import Workers

__all__ = ["LocalTable", "TableOptions", "CompactionPolicy", "new_table_manifest", "discard_table_folder",
           "Workers", "MAX_DIM"]
