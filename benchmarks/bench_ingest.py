#!/usr/bin/env python
"""Ingest benchmark: `omendb ingest` of a large Parquet file, Lance vs Arrow segment tables.

Builds a Parquet file of N x 384 float32 vectors (default 1,000,000 rows, ~1.5 GB) from
the pypi-minilm-100k dataset: ``base.parquet`` repeated with new ids; every copy after
the first gets a little Gaussian noise (sigma 0.01, then re-normalised) so the copies
are near neighbours rather than exact duplicates. Then, for each table format
(``arrow``, ``lance``), in fresh processes:

1. ``omendb ingest FILE --db DB --table pypi --format F --metric cosine --no-index``:
   rows/s and the process's peak RSS (its ``VmHWM``; target < 1 GiB while the file is
   ~1.5 GB), durable (one fsync per 10,000-row batch);
2. ``omendb compact --db DB``: merges the segments and builds the HNSW index
   (seconds, peak RSS);
3. searches in a read-only process: exact p50 (``exact=True``) and indexed p50 (HNSW,
   default ``ef_search``) over queries from ``queries.parquet``, recall@10 of the indexed
   search against the exact one;
4. bytes on disk (segments, index files).

Results: benchmarks/results/ingest.json and ingest.md (``--quick``: ingest-quick.*).

    python benchmarks/bench_ingest.py            # full run (1M rows); run it alone
    python benchmarks/bench_ingest.py --quick    # 30,000 rows: a sanity check in ~1 minute
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, md_table, parser, write_report  # noqa: E402
from bench_core import machine_info  # noqa: E402  (bench_core's machine description)

TABLE = "pypi"
K = 10


# ----------------------------------------------------------------------------- data
def make_parquet(data: Path, rows: int, path: Path, row_group: int = 50_000) -> dict:
    """``rows`` rows of ``base.parquet`` (float32 vectors), repeated with new ids and jittered copies."""
    base = pq.read_table(data / "base.parquet", columns=["id", "name", "summary", "vector"])
    dim = base.schema.field("vector").type.list_size
    vectors = np.asarray(base.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False),
                         dtype=np.float32).reshape(-1, dim)
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("summary", pa.string()),
                        ("vector", pa.list_(pa.float32(), dim))])
    rng = np.random.default_rng(11)
    t0 = time.perf_counter()
    with pq.ParquetWriter(str(path), schema, compression="none") as writer:  # float32 vectors barely compress
        written = 0
        while written < rows:
            n = min(base.num_rows, rows - written)
            copy = written // base.num_rows
            block = vectors[:n]
            if copy:
                block = block + rng.normal(0.0, 0.01, block.shape).astype(np.float32)
                block /= np.linalg.norm(block, axis=1, keepdims=True)
            table = pa.table({"id": np.arange(written, written + n, dtype=np.int64),
                              "name": base.column("name").slice(0, n), "summary": base.column("summary").slice(0, n),
                              "vector": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)},
                             schema=schema)
            writer.write_table(table, row_group_size=row_group)
            written += n
    return {"rows": rows, "dim": dim, "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------- processes
#: Runs a command's Python code, then reports the process's own peak RSS (VmHWM) on stderr.
#: (ru_maxrss of a child is useless here: Linux carries the parent's high-water mark across
#: fork/vfork + exec, so every child would report at least this script's peak.)
PEAK_WRAPPER = r"""
import atexit, runpy, sys
def _report():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                sys.stderr.write("\nOMENDB_BENCH_VMHWM_KB " + line.split()[1] + "\n")
atexit.register(_report)
mode, target = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
if mode == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<probe>", "exec"), {"__name__": "__main__"})
"""


def run_measured(mode: str, target: str, args: list[str]) -> dict:
    """Run a module or code with ``args``: wall time, its own peak RSS, last stdout line as JSON."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, mode, target, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{target} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    peak_kb = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("OMENDB_BENCH_VMHWM_KB")]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"wall_s": round(seconds, 3), "peak_rss_mib": round(peak_kb[-1] / 1024, 1) if peak_kb else None,
            "report": json.loads(lines[-1]) if lines else None}


def omendb_cli(*args: str) -> dict:
    return run_measured("module", "omendb.cli", list(args))


SEARCH_PROBE = r"""
import json, sys, time
import numpy as np, pyarrow.parquet as pq
import omendb
db_path, queries_path, exact_n, indexed_n, k = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
q = pq.read_table(queries_path, columns=["vector"]).column("vector").combine_chunks()
dim = q.type.list_size
queries = np.asarray(q.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
with omendb.open(db_path, read_only=True) as db:
    table = db.open_table("pypi")
    table.search(queries[0], k=k, exact=True); table.search(queries[0], k=k)        # warm: map, load
    exact_ms, exact_ids = [], []
    for v in queries[:exact_n]:
        t0 = time.perf_counter_ns()
        hits = table.search(v, k=k, exact=True, columns=["id"])
        exact_ms.append((time.perf_counter_ns() - t0) / 1e6)
        exact_ids.append(set(hits["id"].to_pylist()))
    indexed_ms, found = [], 0
    for i, v in enumerate(queries[:indexed_n]):
        t0 = time.perf_counter_ns()
        hits = table.search(v, k=k, columns=["id"])
        indexed_ms.append((time.perf_counter_ns() - t0) / 1e6)
        if i < exact_n:
            found += len(exact_ids[i] & set(hits["id"].to_pylist()))
    stats = table.stats()
print(json.dumps({"exact_p50_ms": float(np.percentile(exact_ms, 50)), "exact_p99_ms": float(np.percentile(exact_ms, 99)),
                  "indexed_p50_ms": float(np.percentile(indexed_ms, 50)),
                  "indexed_p99_ms": float(np.percentile(indexed_ms, 99)),
                  "recall_at_10": found / (k * min(exact_n, indexed_n)), "exact_queries": exact_n,
                  "indexed_queries": indexed_n, "stats": stats}))
"""


def file_bytes(db: Path) -> dict:
    segments = db / TABLE / "segments"
    sizes = {"segments": 0, "indexes": 0, "other": 0}
    for path in (db / TABLE).rglob("*"):
        if not path.is_file():
            continue
        if path.parent == segments and path.suffix in (".arrow", ".lance"):
            sizes["segments"] += path.stat().st_size
        elif path.parent == segments and path.suffix == ".hnsw":
            sizes["indexes"] += path.stat().st_size
        else:
            sizes["other"] += path.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


def bench_format(fmt: str, parquet: Path, queries: Path, workdir: Path, args: argparse.Namespace) -> dict:
    db = workdir / f"db-{fmt}"
    shutil.rmtree(db, ignore_errors=True)
    ingest = omendb_cli("ingest", str(parquet), "--db", str(db), "--table", TABLE, "--format", fmt,
                                     "--metric", "cosine", "--no-index", "--batch-size", str(args.batch_size), "--json")
    report = ingest["report"]
    result = {"format": fmt,
              "ingest": {"rows": report["rows"], "seconds": report["seconds"], "rows_per_s": report["rows_per_s"],
                         "process_wall_s": ingest["wall_s"], "peak_rss_mib": ingest["peak_rss_mib"],
                         "segments": report["segments"]},
              "bytes_after_ingest": file_bytes(db)}
    print(f"[{fmt}] ingest: {report['rows']:,} rows, {report['rows_per_s']:,.0f} rows/s, "
          f"peak RSS {ingest['peak_rss_mib']:,.0f} MiB", flush=True)
    index = omendb_cli("compact", "--db", str(db), "--table", TABLE, "--cleanup", "--json")
    result["compact_and_index"] = {"wall_s": index["wall_s"], "peak_rss_mib": index["peak_rss_mib"],
                                   "segments_after": index["report"]["segments_after"],
                                   "indexed_segments": index["report"]["indexed_segments"]}
    print(f"[{fmt}] compact + index: {index['wall_s']:.1f} s, peak RSS {index['peak_rss_mib']:,.0f} MiB", flush=True)
    search = run_measured("code", SEARCH_PROBE, [str(db), str(queries), str(args.exact_queries),
                                                 str(args.indexed_queries), str(K)])
    probe = search["report"]
    result["search"] = {key: (round(value, 3) if isinstance(value, float) else value)
                        for key, value in probe.items() if key != "stats"}
    result["search"]["peak_rss_mib"] = search["peak_rss_mib"]
    result["bytes"] = file_bytes(db)
    print(f"[{fmt}] search: exact p50 {probe['exact_p50_ms']:.1f} ms, indexed p50 {probe['indexed_p50_ms']:.2f} ms, "
          f"recall@10 {probe['recall_at_10']:.3f}; {result['bytes']['total'] / 2**20:,.0f} MiB on disk", flush=True)
    if not args.keep:
        shutil.rmtree(db, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    data, runs = results["data"], results["formats"]
    mib = 1 << 20
    lines = [f"# omendb ingest benchmark{' (quick)' if results['quick'] else ''}", "",
             f"`omendb ingest` of a {data['rows']:,} x {data['dim']} Parquet file "
             f"({data['bytes'] / mib:,.0f} MiB, pypi-minilm-100k repeated with new ids and jittered copies), "
             f"durable batches of {results['batch_size']:,} rows, then `omendb compact` (merge + HNSW) and searches "
             f"in a read-only process. {results['machine']['cpu_count']} CPUs, {results['machine']['cpu_model']}, "
             f"omendb {results['machine']['omendb_git']}, {results['machine']['date_utc']}.", ""]
    rows = []

    def row(label: str, cell) -> None:
        rows.append([label, *(cell(r) for r in runs)])

    row("ingest rows/s", lambda r: f"{r['ingest']['rows_per_s']:,.0f}")
    row("ingest peak RSS", lambda r: f"{r['ingest']['peak_rss_mib']:,.0f} MiB"
        + (" (target < 1 GiB)" if not results["quick"] else ""))
    row("segments after ingest", lambda r: str(r["ingest"]["segments"]))
    row("compact + index build", lambda r: f"{r['compact_and_index']['wall_s']:,.1f} s, "
                                          f"peak RSS {r['compact_and_index']['peak_rss_mib']:,.0f} MiB")
    row("exact search p50 / p99", lambda r: f"{r['search']['exact_p50_ms']:.1f} / {r['search']['exact_p99_ms']:.1f} ms")
    row("indexed search p50 / p99", lambda r: f"{r['search']['indexed_p50_ms']:.2f} / "
                                             f"{r['search']['indexed_p99_ms']:.2f} ms")
    row("recall@10 (indexed vs exact)", lambda r: f"{r['search']['recall_at_10']:.3f}")
    row("search process peak RSS", lambda r: f"{r['search']['peak_rss_mib']:,.0f} MiB")
    row("bytes on disk: segments", lambda r: f"{r['bytes']['segments'] / mib:,.0f} MiB")
    row("bytes on disk: HNSW indexes", lambda r: f"{r['bytes']['indexes'] / mib:,.0f} MiB")
    row("bytes on disk: total", lambda r: f"{r['bytes']['total'] / mib:,.0f} MiB")
    lines += md_table(["", *(r["format"] for r in runs)], "l" * (len(runs) + 1), rows)
    lines += ["", f"Exact p50 over {runs[0]['search']['exact_queries']} queries, indexed over "
                  f"{runs[0]['search']['indexed_queries']}; recall over the exact ones. Peak RSS is the process's "
                  "own high-water mark (`VmHWM`), memory-mapped segment pages included. "
                  "Recall is at the default `ef_search` (64), tuned on the 100K real set: the jittered copies put each "
                  "row among near-duplicates of itself, so a query's true top 10 is one tight cluster that a "
                  "graph walk at that `ef` only partly finds (raise `ef` per search for more). "
                  "Reproduce: "
                  f"`python benchmarks/bench_ingest.py{' --quick' if results['quick'] else ''}`.", ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="30,000 rows, fewer queries: a sanity run")
    p.add_argument("--rows", type=int, help="rows in the Parquet file (default 1,000,000; --quick 30,000)")
    p.add_argument("--batch-size", type=int, default=10_000, help="rows per ingest batch (default %(default)s)")
    p.add_argument("--formats", default="arrow,lance", help="table formats to compare (default %(default)s)")
    p.add_argument("--exact-queries", type=int, help="exact searches timed (default 30, --quick 10)")
    p.add_argument("--indexed-queries", type=int, help="indexed searches timed (default 300, --quick 50)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where the temp folder goes")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--name", help="result file stem (default ingest, --quick ingest-quick)")
    p.add_argument("--keep", action="store_true", help="keep the Parquet file and databases")
    args = p.parse_args(argv)
    args.rows = args.rows or (30_000 if args.quick else 1_000_000)
    args.exact_queries = args.exact_queries or (10 if args.quick else 30)
    args.indexed_queries = args.indexed_queries or (50 if args.quick else 300)
    args.name = args.name or ("ingest-quick" if args.quick else "ingest")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    work = Path(tempfile.mkdtemp(prefix="omendb-bench-ingest-", dir=args.workdir))
    try:
        parquet = work / "vectors.parquet"
        data = make_parquet(args.data, args.rows, parquet)
        print(f"wrote {parquet} ({data['rows']:,} x {data['dim']}, {data['bytes'] / 2**20:,.0f} MiB) "
              f"in {data['seconds']:.1f} s", flush=True)
        results = {"benchmark": "ingest", "quick": args.quick, "batch_size": args.batch_size, "data": data,
                   "machine": machine_info(work), "formats": []}
        for fmt in formats:
            results["formats"].append(bench_format(fmt, parquet, args.data / "queries.parquet", work, args))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out / args.name, results, markdown, indent=2)
    print(f"results: {args.out / (args.name + '.json')}, {args.out / (args.name + '.md')}")
    return results


if __name__ == "__main__":
    main()
