"""Timing, data and formatting helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["now_ns", "pct", "lat_summary", "load_vectors", "load_dataset", "dataset_schema", "dir_bytes",
           "thread_pools", "f2", "f3", "yes"]


def now_ns() -> int:
    return time.perf_counter_ns()


def pct(samples_ns, q: float) -> float | None:
    """Percentile of nanosecond samples, in milliseconds."""
    if len(samples_ns) == 0:
        return None
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q)) / 1e6


def lat_summary(lat_ns) -> dict:
    lat = np.asarray(lat_ns, dtype=np.float64)
    return {"n": int(lat.size), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "mean_ms": float(lat.mean()) / 1e6 if lat.size else None,
            "max_ms": float(lat.max()) / 1e6 if lat.size else None}


def load_vectors(column, dim: int) -> np.ndarray:
    flat = column.combine_chunks().flatten()
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def load_dataset(data: Path, rows: int, n_queries: int):
    """(base Arrow table id/name/summary/vector with float32 vectors, X float32, Q float32, dim)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = pq.read_table(data / "base.parquet", columns=["id", "name", "summary", "vector"])
    if rows > base.num_rows:
        raise SystemExit(f"--rows {rows} > {base.num_rows} rows in {data / 'base.parquet'}")
    base = base.slice(0, rows).combine_chunks()
    dim = base.schema.field("vector").type.list_size
    X = load_vectors(base["vector"], dim)
    queries = pq.read_table(data / "queries.parquet", columns=["vector"])
    if n_queries > queries.num_rows:
        raise SystemExit(f"--queries {n_queries} > {queries.num_rows} rows in {data / 'queries.parquet'}")
    Q = np.ascontiguousarray(load_vectors(queries.slice(0, n_queries)["vector"], dim))
    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), dim)
    table = pa.table({"id": base["id"], "name": base["name"], "summary": base["summary"], "vector": vec},
                     schema=dataset_schema(dim))
    return table, X, Q, dim


def dataset_schema(dim: int):
    """id (int64, not null), name, summary, vector (float32 x dim, not null)."""
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string()),
                      pa.field("summary", pa.string()),
                      pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def thread_pools() -> list[dict]:
    """BLAS / OpenMP pools loaded in this process (threadpoolctl, when installed) and their thread counts."""
    try:
        import faiss  # noqa: F401  (loads its OpenMP runtime and BLAS)
        import threadpoolctl

        return [{k: info.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                for info in threadpoolctl.threadpool_info()]
    except Exception:
        return []


def f2(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def f3(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"
