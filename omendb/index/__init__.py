"""Search kernels over the arrays they are handed: exact flat scan (and HNSW later).

Nothing here knows about tables or files.
"""
