"""The two-line API, embedded: add a batch of vectors, search them.

    python examples/two_lines_embedded.py
"""

import tempfile

import numpy as np

import omendb

vectors = np.random.default_rng(0).standard_normal((1_000, 64)).astype(np.float32)
query = vectors[42] + 0.01

with tempfile.TemporaryDirectory() as folder:
    db = omendb.open(f"{folder}/vectors.db")      # embedded
    ids = db.add_batch(vectors)                   # -> ids, in the default table "vectors"
    hits = db.search(query, k=5)                  # Arrow table with id and _distance
    print(f"added {len(ids)} vectors; nearest to the query: {hits['id'].to_pylist()}")
    db.add_batch(vectors[:2] * 2, ids=[5_000, 5_001], metadata=None)
    print(f"count {db.count()}, deleted {db.delete([5_000])}, count {db.count()}")
    db.close()
