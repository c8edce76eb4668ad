"""polars: stream a LazyFrame into omendb batch by batch, then search and filter with polars.

    python examples/polars_lazy_ingest.py

A LazyFrame over Parquet files is ingested without collecting it: `omendb.io.ingest`
pulls record batches through polars' streaming engine, one durable commit per batch.
"""

import tempfile
from pathlib import Path

import numpy as np
import polars as pl

import omendb
from omendb.io import ingest

rng = np.random.default_rng(1)
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    # some Parquet files to start from (in real life: your data lake)
    for part in range(3):
        n = 4_000
        pl.DataFrame({
            "doc_id": np.arange(part * n, (part + 1) * n),
            "lang": rng.choice(["en", "de", "fr"], n),
            "length": rng.integers(50, 5_000, n),
            "embedding": rng.standard_normal((n, 32)).astype(np.float32),   # a 2-D array: Array(Float32, 32)
        }).write_parquet(tmp / f"part-{part}.parquet")

    lazy = (pl.scan_parquet(tmp / "part-*.parquet")
            .filter(pl.col("length") > 100)                      # transformations stay lazy
            .with_columns(pl.col("lang").str.to_uppercase()))

    with omendb.open(tmp / "docs.omen") as db:
        result = ingest(db, lazy, table="docs", id_column="doc_id", vector_column="embedding",
                        metric="cosine", batch_size=2_000)
        print(f"ingested {result.rows:,} rows from a LazyFrame in {result.batches} batches "
              f"({result.rows_per_s:,.0f} rows/s)")

        docs = db["docs"]
        query = rng.standard_normal(32).astype(np.float32)
        hits = pl.from_arrow(docs.search(query, k=20, columns=["doc_id", "lang", "length"]))
        summary = hits.group_by("lang").agg(pl.len().alias("hits"), pl.col("_distance").min()).sort("lang")
        print(summary)
        print(f"best match: doc {hits['doc_id'][0]} ({hits['lang'][0]}, {hits['length'][0]} chars)")
        print(f"whole table as polars: {docs.to_polars().shape}")
