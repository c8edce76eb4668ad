"""Search kernels over the arrays they are handed: the exact flat scan (``flat``), HNSW
graphs built and searched with faiss (``hnsw``), primary-key lookup (``keys``) and
BLAS thread control (``blas``).

Nothing here knows about tables; the only files it touches are the index files it is
told to save or load.
"""
