"""Bytes on disk: write-ahead log, segments, deletion files and manifests.

Nothing here knows about indexes, queries or tables; it reads and writes files
whose formats are specified in ``formats/``.
"""
