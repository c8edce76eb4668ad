"""``omendb demo``: a tour on data it makes itself (no download).

It writes clustered vectors with metadata to a Parquet file in a temporary folder,
ingests that file in durable batches, waits for the HNSW index, runs exact, HNSW,
filtered and batched searches, queries through SQL (``omen_knn`` / ``omen_scan``),
deletes and adds rows, compacts, and exports the table back to Parquet.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table as RichTable

import omendb

from ..table.export import export_table
from ..io.ingest import ingest

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
    with omendb.open(path) as db, tempfile.TemporaryDirectory(prefix="omendb-demo-") as tmp:
        if "products" in db:
            db.drop_table("products")
        parquet = Path(tmp) / "products.parquet"
        pq.write_table(base, parquet, row_group_size=batch)
        console.print(f"wrote {rows:,} rows to {parquet.name} ({parquet.stat().st_size / 2**20:.1f} MiB) "
                      "in a temporary folder")
        progress = Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("rows"), TimeRemainingColumn(), console=console, transient=True)
        with progress:
            task = progress.add_task("ingest", total=rows)
            result = ingest(db, parquet, table="products", metric="cosine", batch_size=batch,
                            on_batch=lambda n: progress.advance(task, n))
        table = db.open_table("products")
        table.create_index(m=16, ef_construction=100)
        elapsed = result.seconds
        report["ingest_rows_per_s"] = result.rows_per_s
        console.print(f"ingested {parquet.name} with omendb.io.ingest: {rows:,} rows in {elapsed:.2f} s "
                      f"([bold]{result.rows_per_s:,.0f} rows/s[/], {result.batches} durable batches of {batch:,}; "
                      f"CLI: omendb ingest {parquet.name} --db {path} --table products)")
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
        _sql_tour(console, db, dim, probe_vectors[0], report)
        _compaction_tour(console, table, make_clustered(batch, dim, seed=11), rows, report)
        exported = export_table(table, Path(tmp) / "products-export.parquet")
        console.print(f"exported {exported.rows:,} live rows back to Parquet in {exported.seconds:.2f} s "
                      f"({exported.bytes / 2**20:.1f} MiB; CLI: omendb export --db {path} --table products "
                      "-o products.parquet)")
        stats = table.stats()
        report["stats"] = stats
        console.print(f"table 'products': {stats['rows']:,} rows in {stats['segments']} segment(s), "
                      f"{stats['bytes'] / 2**20:.1f} MiB on disk, version {stats['version']}")
    console.print(f"data is in [bold]{path.resolve()}[/] — reopen it with "
                  f"omendb.open({str(path)!r}).open_table('products'), or try "
                  f"omendb info --db {path}")
    return report


def _sql_tour(console: Console, db: omendb.Database, dim: int, query: np.ndarray, report: dict) -> None:
    """kNN and scans through DuckDB SQL."""
    sql = (f"SELECT id, category, price, _distance "
           f"FROM omen_knn('products', ?::FLOAT[{dim}], 3, filter := 'price < 20')")
    t0 = time.perf_counter()
    rows = [(i, c, p, round(d, 4)) for i, c, p, d in db.sql(sql, params=[query.tolist()]).fetchall()]
    report["sql_knn_ms"] = (time.perf_counter() - t0) * 1e3
    console.print(f"SQL: {sql.replace(f'?::FLOAT[{dim}]', 'q')}\n  -> {rows} ({report['sql_knn_ms']:.1f} ms)")
    sql = ("SELECT category, count(*) AS n, round(avg(price), 2) AS avg_price FROM omen_scan('products') "
           "GROUP BY category ORDER BY n DESC LIMIT 3")
    console.print(f"SQL: {sql}\n  -> {db.sql(sql).fetchall()}")


def _compaction_tour(console: Console, table: omendb.Table, extra: pa.Table, rows: int, report: dict) -> None:
    """Deletes and small writes make dead rows and small segments; compact() merges them."""
    deleted = table.delete(where="price > 60")
    extra = extra.set_column(0, "id", pa.array(np.arange(rows, rows + extra.num_rows, dtype=np.int64)))
    for piece in range(4):  # a few small flushed batches: small segments
        table.add(extra.slice(piece * (extra.num_rows // 4), extra.num_rows // 4))
        table.flush()
    before = table.stats()
    t0 = time.perf_counter()
    with console.status("compacting (merging segments, dropping deleted rows, rebuilding the index)..."):
        table.compact()
        table.wait_for_index()
    report["compact_s"] = time.perf_counter() - t0
    after = table.stats()
    freed = table.cleanup(keep_last=1)
    console.print(f"deleted {deleted:,} rows (price > 60) and added {extra.num_rows:,} in 4 small flushes: "
                  f"{before['segments']} segments, {before['deleted_rows']:,} dead rows; compacted to "
                  f"{after['segments']} segment(s) with {after['deleted_rows']:,} dead rows, index rebuilt, in "
                  f"{report['compact_s']:.1f} s; cleanup() removed {freed['versions_removed']} old versions, "
                  f"{freed['bytes_freed'] / 2**20:.1f} MiB (CLI: omendb compact --db ... --cleanup)")
