"""Tables: a state with one owner, and the collaborators that read, write and maintain it.

``state`` (the state and its one publish path), ``reader`` (queries over a state),
``writer`` (validation, WAL, memtable), ``flusher`` (memtable to segment),
``indexer`` (HNSW builds), ``compactor`` (merges racing safely with writes),
``versions`` (listing, following, cleanup), ``recovery`` (what the log replays on
open, salvage), and ``table`` (``LocalTable``, which wires them).
"""

from .options import MAX_DIM, CompactionPolicy, TableOptions, new_table_manifest
from .table import LocalTable, discard_table_folder
from .workers import Workers

__all__ = ["LocalTable", "TableOptions", "CompactionPolicy", "new_table_manifest", "discard_table_folder",
           "Workers", "MAX_DIM"]
