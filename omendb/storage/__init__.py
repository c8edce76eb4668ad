"""Bytes on disk: write-ahead log, segments, deletion files, manifests, the table
folder's layout and its writer lock.

Nothing here knows about indexes, queries or tables; it reads and writes files
whose formats are specified in ``formats/``.
"""
