"""Tables: durable writes, snapshot reads, index maintenance, compaction and versions.

``Table`` is assembled from one module per concern: ``reader`` (queries over a
snapshot), ``writer`` (validation, WAL, memtable), ``flushing`` (memtable to segment,
in the background), ``indexing`` (background HNSW builds),
``compaction`` (merges racing safely with writes) and ``versions`` (time travel and
cleanup).
"""

from .layout import CompactionPolicy, TableOptions, new_table_manifest
from .table import Table

__all__ = ["Table", "TableOptions", "CompactionPolicy", "new_table_manifest"]
