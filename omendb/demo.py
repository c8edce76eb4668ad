"""``omendb demo``: a tour on data it makes itself (no download)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table as RichTable

import omendb

__all__ = ["make_clustered", "run_demo"]

CATEGORIES = ("books", "music", "films", "games", "tools", "garden", "sports", "toys")


def make_clustered(rows: int, dim: int, *, clusters: int = 64, seed: int = 7) -> pa.Table:
    """Clustered unit vectors with metadata: ``id``, ``category``, ``price``, ``title``, ``vector``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    label = rng.integers(0, clusters, rows)
    vectors = centres[label] + 0.35 * rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    category = np.asarray(CATEGORIES)[label % len(CATEGORIES)]
    return pa.table({
        "id": np.arange(rows, dtype=np.int64),
        "category": category,
        "price": np.round(rng.gamma(2.0, 15.0, rows), 2),
        "title": [f"item {i} in cluster {c}" for i, c in enumerate(label)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    })


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.asarray(samples) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run_demo(path: str | Path = "omendb-demo.omen", rows: int = 50_000, dim: int = 128,
             batch: int = 5_000, queries: int = 200, console: Console | None = None) -> dict:
    """Create a database at ``path``, ingest, search, and print what happened."""
    console = console or Console()
    path = Path(path)
    console.print(f"[bold]omendb {omendb.__version__} demo[/] — {rows:,} clustered {dim}-d vectors")
    data = make_clustered(rows + queries, dim)
    base, probe = data.slice(0, rows), data.slice(rows)
    probe_vectors = np.stack(probe.column("vector").to_numpy(zero_copy_only=False))
    report: dict = {"path": str(path.resolve()), "rows": rows, "dim": dim}
    with omendb.open(path) as db:
        if "products" in db:
            db.drop_table("products")
        table = db.create_table("products", dim=dim, metric="cosine", schema=base.schema,
                                index=omendb.HnswConfig(m=16, ef_construction=100))
        progress = Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("rows"), TimeRemainingColumn(), console=console, transient=True)
        start = time.perf_counter()
        with progress:
            task = progress.add_task("ingest", total=rows)
            for offset in range(0, rows, batch):
                chunk = base.slice(offset, batch)
                table.add(chunk)
                progress.advance(task, chunk.num_rows)
        elapsed = time.perf_counter() - start
        report["ingest_rows_per_s"] = rows / elapsed
        console.print(f"ingested {rows:,} rows in {elapsed:.2f} s "
                      f"([bold]{rows / elapsed:,.0f} rows/s[/], durable: one fsync per batch of {batch:,})")
        table.flush()
        t0 = time.perf_counter()
        with console.status("building the HNSW index in the background..."):
            table.wait_for_index()
        report["index_build_s"] = time.perf_counter() - t0
        stats = table.stats()
        console.print(f"HNSW index (m=16, ef_construction=100) over {stats['indexed_rows']:,} rows in "
                      f"{stats['indexed_segments']} segment(s): built in {report['index_build_s']:.1f} s")

        exact_ids, latencies = [], []
        for q in probe_vectors:
            t0 = time.perf_counter()
            exact_ids.append(set(table.search(q, k=10, exact=True, columns=["id"])["id"].to_pylist()))
            latencies.append(time.perf_counter() - t0)
        p50, p99 = _percentiles(latencies)
        report["exact_p50_ms"], report["exact_p99_ms"] = p50, p99
        console.print(f"exact search, k=10: p50 {p50:.2f} ms, p99 {p99:.2f} ms over {queries} queries")

        found, latencies = 0, []
        for q, truth in zip(probe_vectors, exact_ids):
            t0 = time.perf_counter()
            hits = table.search(q, k=10, columns=["id"])
            latencies.append(time.perf_counter() - t0)
            found += len(truth & set(hits["id"].to_pylist()))
        p50, p99 = _percentiles(latencies)
        report["hnsw_p50_ms"], report["hnsw_recall_at_10"] = p50, found / (10 * len(exact_ids))
        console.print(f"HNSW search, k=10: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                      f"recall@10 vs exact {report['hnsw_recall_at_10']:.3f}")

        where = "category = 'music' AND price < 20"
        latencies = []
        for q in probe_vectors[:50]:
            t0 = time.perf_counter()
            table.search(q, k=10, where=where)
            latencies.append(time.perf_counter() - t0)
        p50, p99 = _percentiles(latencies)
        report["filtered_p50_ms"] = p50
        matching = table.search(probe_vectors[0], k=rows, where=where, columns=["id"]).num_rows
        console.print(f"filtered search ({where!r} matches {matching:,} rows): p50 {p50:.2f} ms, p99 {p99:.2f} ms")

        t0 = time.perf_counter()
        batch_hits = table.search(probe_vectors, k=10, columns=["id"])
        report["batch_queries_per_s"] = queries / (time.perf_counter() - t0)
        console.print(f"batched search: {queries} queries in one call, "
                      f"{report['batch_queries_per_s']:,.0f} queries/s ({batch_hits.num_rows} rows)")

        result = RichTable(title=f"top 5 for query 0 where {where}")
        for name in ("id", "category", "price", "title", "_distance"):
            result.add_column(name, justify="right" if name != "title" else "left")
        for row in table.search(probe_vectors[0], k=5, where=where).to_pylist():
            result.add_row(str(row["id"]), row["category"], f"{row['price']:.2f}", row["title"],
                           f"{row['_distance']:.4f}")
        console.print(result)
        stats = table.stats()
        report["stats"] = stats
        console.print(f"table 'products': {stats['rows']:,} rows in {stats['segments']} segment(s), "
                      f"{stats['bytes'] / 2**20:.1f} MiB on disk, version {stats['version']}")
    console.print(f"data is in [bold]{path.resolve()}[/] — reopen it with "
                  f"omendb.open({str(path)!r}).open_table('products')")
    return report
