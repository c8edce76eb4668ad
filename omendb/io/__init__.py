"""Rows in and out: reading sources (Parquet, Lance, Arrow, CSV, JSON Lines, NumPy,
DataFrames) as Arrow batches, ingesting them into a table, exporting a table.

``from omendb.io import ingest, open_source, export_table``.
"""

from ..table.export import EXPORT_FORMATS, ExportResult, export_table
from .ingest import IngestResult, ingest
from .sources import FILE_FORMATS, Source, detect_format, open_source

__all__ = ["ingest", "IngestResult", "open_source", "Source", "detect_format", "FILE_FORMATS", "export_table",
           "ExportResult", "EXPORT_FORMATS"]
