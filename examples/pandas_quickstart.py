"""pandas in, pandas out: build a table from a DataFrame, search it, get a DataFrame back.

    python examples/pandas_quickstart.py

Makes its own data (product titles with random 64-d embeddings) in a temporary folder.
"""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import omendb

rng = np.random.default_rng(0)
rows = 5_000
df = pd.DataFrame({
    "id": np.arange(rows),
    "title": [f"product {i}" for i in range(rows)],
    "category": rng.choice(["books", "music", "games"], rows),
    "price": rng.gamma(2.0, 10.0, rows).round(2),
    "vector": list(rng.standard_normal((rows, 64), dtype=np.float32)),  # one NumPy array per row
})

with tempfile.TemporaryDirectory() as tmp, omendb.open(Path(tmp) / "shop.omen") as db:
    products = db.create_table("products", data=df, metric="cosine")   # schema inferred from the DataFrame
    print(f"table 'products': {products.count():,} rows, dim {products.dim}, metric {products.metric}")

    # more rows later: any DataFrame with the same columns (ids given or assigned)
    products.add(df.head(10).assign(id=np.arange(rows, rows + 10)))

    query = df["vector"][42]
    hits = products.search(query, k=5, where="category = 'books' AND price < 30",
                           columns=["id", "title", "category", "price"]).to_pandas()
    print(hits.to_string(index=False))

    # a batch of queries in one call: a `_query` column tells which query each row answers
    many = products.search(np.stack(df["vector"][:3]), k=2, columns=["id"]).to_pandas()
    print(many.groupby("_query")["id"].apply(list).to_dict())

    nearest = products.search(query, k=1, columns=["title"]).to_pandas()
    print(f"nearest to product 42: {nearest['title'][0]} (distance {nearest['_distance'][0]:.4f})")
