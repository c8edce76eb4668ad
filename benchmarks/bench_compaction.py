#!/usr/bin/env python
"""Compaction benchmark: searches during a merge, merge throughput, disk given back, write-to-indexed time.

Measures, on the pypi-minilm-100k dataset (100,000 x 384 unit vectors, cosine), k=10:

0. a table with many small segments: ``omendb.open(path, fsync=False, memtable_bytes=1 GiB,
   compaction=False)``, ``HnswConfig(m=16, ef_construction=200, min_rows=1000)``, the rows
   added in ``--segments`` equal chunks with ``flush()`` after each (default 10 segments of
   10,000 rows; ``--quick`` 4 of 5,000, since omendb's planner scans a segment of <= 4,096
   rows exactly even when it has a graph), every segment indexed (``wait_for_index``).
   Three copies of that folder are taken so each part below starts from the same state.
1. search while compacting: single-query ``tbl.search(q, k=10, columns=['id'])`` p50/p99 on
   the idle table (``--idle-passes`` passes over the queries), then ``tbl.compact()`` in a
   thread while this thread issues the same searches back to back until it returns, then
   idle again on the merged segment. Recall@10 against an exact NumPy top-10 in all three
   phases (the merge must never leave searches without an index or with wrong rows).
   Target: p99 while compacting <= 2x idle p99.
2. compaction throughput on an idle copy: rows merged / ``compact()`` seconds, with
   ``build_indexes=True`` (the merged segment's HNSW index is built before the merge is
   published, so this includes the build) and with ``build_indexes=False`` (the merge alone).
3. disk: on the merged table, ``cleanup()``, delete every even id (half the rows),
   ``stats()['bytes']``; ``compact()``; bytes; ``cleanup()``; bytes.
4. write -> indexed: per memtable size (``--sizes`` MiB; default 8,32,64, ``--quick``
   4,8,16), a fresh database with the default background services
   (``omendb.open(path, memtable_bytes=size)``: fsync, index builder, compaction policy
   ``CompactionPolicy()`` on), the same HNSW config. 1,000-row durable adds until one flushes
   the memtable, then no writes while ``stats()`` is polled every ``--poll-ms`` until every
   segment row is indexed; repeated ``--flushes`` times (default 5: the 4th flush reaches
   ``min_segments=4`` and starts a background merge). Reports the flushing add's latency,
   flush -> indexed, and oldest row (first add after the previous flush) -> indexed.

Results: benchmarks/results/compaction.json and compaction.md (``--quick``: compaction-quick.*).

    python benchmarks/bench_compaction.py            # full: 100K rows, 1,000 queries; run it alone
    python benchmarks/bench_compaction.py --quick    # 20K rows, 200 queries: a sanity check
"""

from __future__ import annotations

import gc
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _harness import (THREAD_ENV, WARMUP, Run, add_run_args, dataset_schema, dir_bytes, exact_topk, f2, f3,
                      f4, float32_table, lat_summary, load_dataset, machine_info, machine_section, mib, now_ns,
                      package_version, parser, recall_at_k, run_defaults, time_each, title, yes)

TABLE = "pypi"
K = 10
M = 16
EF_CONSTRUCTION = 200
MIN_ROWS = 1000
ADD_BATCH = 1_000
P99_TARGET = 2.0
#: CompactionPolicy().min_segments: the flush that starts the first background merge in part 4
MIN_SEGMENTS = 4
INDEX_TIMEOUT_S = 1800.0


# ============================================================================ helpers
def recall(found: list[list[int]], qidx, gt: np.ndarray) -> float | None:
    """recall@10 of answers ``found`` to the queries ``qidx`` (None without answers)."""
    return recall_at_k(found, gt[np.asarray(qidx, dtype=np.int64)], K)


def machine(workdir: Path) -> dict:
    import psutil

    def libraries() -> dict:
        try:
            import faiss

            omp = faiss.omp_get_max_threads()
        except Exception:
            omp = None
        return {"faiss": package_version("faiss"), "faiss_omp_threads": omp, "psutil": psutil.__version__}

    return machine_info(workdir, libraries, env=THREAD_ENV + ("OMP_WAIT_POLICY",), pools=True)


def exact_scan_rows() -> int:
    """Segments with at most this many rows are scanned exactly by omendb's planner (internal constant)."""
    try:
        from omendb.query.search import EXACT_MAX_ALLOWED

        return int(EXACT_MAX_ALLOWED)
    except Exception:
        return 4096


def hnsw_config():
    import omendb

    return omendb.HnswConfig(m=M, ef_construction=EF_CONSTRUCTION, min_rows=MIN_ROWS)


# ============================================================================ 0. many small segments
def build_segmented(path: Path, data, segments: int) -> dict:
    import omendb

    shutil.rmtree(path, ignore_errors=True)
    per = -(-data.num_rows // segments)
    t0 = time.perf_counter()
    with omendb.open(path, fsync=False, memtable_bytes=1 << 30, compaction=False) as db:
        tbl = db.create_table(TABLE, schema=data.schema, metric="cosine", index=hnsw_config())
        for s in range(0, data.num_rows, per):
            chunk = data.slice(s, per)
            for b in range(0, chunk.num_rows, 10_000):
                tbl.add(chunk.slice(b, 10_000))
            tbl.flush()
        t1 = time.perf_counter()
        ok = tbl.wait_for_index()
        t2 = time.perf_counter()
        stats = tbl.stats()
    return {"rows_per_segment": per, "exact_scan_rows": exact_scan_rows(), "ingest_flush_s": t1 - t0, "index_build_s": t2 - t1, "wait_ok": bool(ok),
            "stats": stats}


# ============================================================================ 1. search while compacting
def search_pass(tbl, Q: np.ndarray, passes: int, warmup: int = 0):
    """``passes`` passes of single-query searches over ``Q``: (latencies, found ids, query index of each)."""
    results, lat = time_each(lambda q: tbl.search(q, k=K, columns=["id"]), Q, warmup, passes)
    return lat, [r["id"].to_pylist() for r in results], np.tile(np.arange(len(Q)), passes)


def bench_during(path: Path, Q: np.ndarray, gt: np.ndarray, idle_passes: int) -> dict:
    import omendb

    db = omendb.open(path, compaction=False)
    try:
        tbl = db.open_table(TABLE)
        before = tbl.stats()
        lat, found, qidx = search_pass(tbl, Q, idle_passes, WARMUP)
        idle = {**lat_summary(lat), "recall": recall(found, qidx, gt),
                "short": sum(len(f) < K for f in found)}
        print(f"  idle ({before['segments']} segments): p50 {idle['p50_ms']:.3f} ms p99 {idle['p99_ms']:.3f} ms "
              f"recall {idle['recall']:.4f} ({idle['n']} searches)", flush=True)

        box: dict = {}

        def run() -> None:
            t0 = time.perf_counter()
            try:
                box["result"] = tbl.compact()
            except BaseException as exc:  # noqa: BLE001 - reported
                box["error"] = f"{type(exc).__name__}: {exc}"
            box["seconds"] = time.perf_counter() - t0

        lat, res, qs, at = [], [], [], []
        thread = threading.Thread(target=run, name="compact", daemon=True)
        gc.collect()
        gc.disable()
        t_start = now_ns()
        thread.start()
        i = 0
        try:
            while thread.is_alive():
                if now_ns() - t_start > INDEX_TIMEOUT_S * 1e9:
                    break  # reported below as a hung compact()
                qi = i % len(Q)
                t0 = now_ns()
                r = tbl.search(Q[qi], k=K, columns=["id"])
                t1 = now_ns()
                lat.append(t1 - t0)
                at.append((t0 - t_start) / 1e9)
                res.append(r)
                qs.append(qi)
                i += 1
        finally:
            gc.enable()
        thread.join(60.0)
        if thread.is_alive():
            box.setdefault("error", f"compact() still running after {INDEX_TIMEOUT_S:.0f} s")
            box.setdefault("seconds", (now_ns() - t_start) / 1e9)
        found = [r["id"].to_pylist() for r in res]
        during = {**lat_summary(lat), "recall": recall(found, qs, gt),
                  "short": sum(len(f) < K for f in found), "compact_s": box.get("seconds"),
                  "compact_result": box.get("result"), "error": box.get("error"),
                  "searches_per_s": len(lat) / box["seconds"] if box.get("seconds") else None}
        # latency over time: p50/p99 per tenth of the compaction
        if lat:
            edges = np.linspace(0, box["seconds"], 11)
            lat_a, at_a = np.asarray(lat), np.asarray(at)
            during["timeline"] = [{"from_s": float(edges[j]), "to_s": float(edges[j + 1]),
                                   **lat_summary(lat_a[(at_a >= edges[j]) & (at_a < edges[j + 1])])}
                                  for j in range(10)]
        print(f"  during compact() ({during['compact_s']:.2f} s): p50 {during['p50_ms']:.3f} ms "
              f"p99 {during['p99_ms']:.3f} ms recall {during['recall']:.4f} ({during['n']} searches)"
              + (f" ERROR {during['error']}" if during["error"] else ""), flush=True)
        after_stats = tbl.stats()
        lat, found, qidx = search_pass(tbl, Q, idle_passes)
        after = {**lat_summary(lat), "recall": recall(found, qidx, gt), "short": sum(len(f) < K for f in found)}
        print(f"  after ({after_stats['segments']} segment(s), {after_stats['indexed_segments']} indexed): "
              f"p50 {after['p50_ms']:.3f} ms p99 {after['p99_ms']:.3f} ms recall {after['recall']:.4f}", flush=True)
    finally:
        db.close()
    return {"stats_before": before, "stats_after": after_stats, "idle": idle, "during": during, "after": after,
            "p99_ratio": during["p99_ms"] / idle["p99_ms"] if during["p99_ms"] else None,
            "p50_ratio": during["p50_ms"] / idle["p50_ms"] if during["p50_ms"] else None}


# ============================================================================ 2. throughput
def bench_throughput(path: Path, build_indexes: bool) -> dict:
    import omendb

    db = omendb.open(path, compaction=False, build_indexes=build_indexes)
    try:
        tbl = db.open_table(TABLE)
        before = tbl.stats()
        gc.collect()
        t0 = time.perf_counter()
        result = tbl.compact()
        seconds = time.perf_counter() - t0
        after = tbl.stats()
    finally:
        db.close()
    rows = before["segment_rows"]
    return {"build_indexes": build_indexes, "rows_merged": rows, "segments_before": before["segments"],
            "seconds": seconds, "rows_per_s": rows / seconds, "result": result,
            "segments_after": after["segments"], "indexed_segments_after": after["indexed_segments"],
            "bytes_after": after["bytes"]}


# ============================================================================ 3. disk
def bench_disk(path: Path, Q: np.ndarray) -> dict:
    import omendb

    db = omendb.open(path, compaction=False)
    try:
        tbl = db.open_table(TABLE)
        pre_cleanup = tbl.cleanup()
        start = tbl.stats()
        ids = tbl.to_arrow()["id"].to_numpy()
        even = ids[ids % 2 == 0]
        t0 = time.perf_counter()
        deleted = tbl.delete(even)
        delete_s = time.perf_counter() - t0
        before = tbl.stats()
        t0 = time.perf_counter()
        result = tbl.compact()
        compact_s = time.perf_counter() - t0
        after_compact = tbl.stats()
        t0 = time.perf_counter()
        cleaned = tbl.cleanup()
        cleanup_s = time.perf_counter() - t0
        after = tbl.stats()
        count = tbl.count()
        bad = 0
        for q in Q[:50]:
            got = tbl.search(q, k=K, columns=["id"])["id"].to_numpy()
            bad += int((got % 2 == 0).sum()) + (K - got.size)
    finally:
        db.close()
    return {"rows_start": start["rows"], "bytes_start": start["bytes"], "pre_cleanup": pre_cleanup,
            "deleted": deleted, "delete_s": delete_s, "bytes_before": before["bytes"],
            "deleted_rows_before": before["deleted_rows"], "compact": result, "compact_s": compact_s,
            "compact_rows_per_s": start["rows"] / compact_s, "bytes_after_compact": after_compact["bytes"],
            "cleanup": cleaned, "cleanup_s": cleanup_s, "bytes_after": after["bytes"], "stats_after": after,
            "count_after": count, "count_ok": count == start["rows"] - deleted,
            "deleted_or_short_in_50_searches": bad, "folder_bytes_after": dir_bytes(path),
            "ratio": after["bytes"] / before["bytes"]}


# ============================================================================ 4. write -> indexed
def next_batch(data, counter: list[int], id_base: int):
    """The next 1,000 rows of ``data`` (cycled) with fresh ids."""
    import pyarrow as pa

    n = data.num_rows
    start = (counter[0] * ADD_BATCH) % n
    batch = data.slice(start, min(ADD_BATCH, n - start))
    first = id_base + counter[0] * ADD_BATCH
    counter[0] += 1
    return batch.set_column(0, "id", pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64)))


def bench_to_indexed(workdir: Path, data, size_mib: int, flushes: int, poll_s: float) -> dict:
    import omendb

    path = workdir / f"to-indexed-{size_mib}"
    shutil.rmtree(path, ignore_errors=True)
    db = omendb.open(path, memtable_bytes=size_mib << 20)  # fsync, builder, default CompactionPolicy: all on
    rows_out = []
    try:
        tbl = db.create_table(TABLE, schema=data.schema, metric="cosine", index=hnsw_config())
        counter = [0]
        # bound the fill loop: 4x the rows the memtable should hold before it flushes
        max_rows = 4 * (size_mib << 20) // max(1, data.nbytes // data.num_rows) + ADD_BATCH
        for f in range(flushes):
            t_first = None
            rows = memtable_rows = tbl.stats()["memtable_rows"]  # rows already held go into this flush
            while True:
                if rows > max_rows:
                    raise RuntimeError(f"no flush after {rows:,} rows with memtable_bytes={size_mib} MiB")
                b = next_batch(data, counter, 1_000_000_000)
                t0 = time.perf_counter()
                added = tbl.add(b)
                rows += added
                t1 = time.perf_counter()
                wall_t1 = time.time()
                t_first = t0 if t_first is None else t_first
                st = tbl.stats()
                # this add flushed the memtable (inside add: before its rows when they would overfill it)
                if st["memtable_rows"] < memtable_rows + added:
                    rows -= st["memtable_rows"]  # rows that went into the new segment
                    break
                memtable_rows = st["memtable_rows"]
            seg_before_wait = st["segments"]
            polls = 0
            timed_out = False
            while True:
                st = tbl.stats()
                polls += 1
                if st["unindexed_rows"] - st["memtable_rows"] == 0:
                    t2 = time.perf_counter()
                    break
                if time.perf_counter() - t1 > INDEX_TIMEOUT_S:
                    t2, timed_out = time.perf_counter(), True
                    break
                time.sleep(poll_s)
            row = {"flush": f + 1, "rows_flushed": rows, "fill_s": t1 - t_first, "flush_add_ms": (t1 - t0) * 1e3,
                   "flush_to_indexed_s": t2 - t1, "newest_row_to_indexed_s": t2 - t0,
                   "oldest_row_to_indexed_s": t2 - t_first, "segments_at_flush": seg_before_wait,
                   "segments_when_indexed": st["segments"], "indexed_segments": st["indexed_segments"],
                   "polls": polls, "timed_out": timed_out, "wall_flush_end": wall_t1}
            rows_out.append(row)
            print(f"  {size_mib:3d} MiB flush {f + 1}: {rows:,} rows, flushing add {row['flush_add_ms']:.1f} ms, "
                  f"flush -> indexed {row['flush_to_indexed_s']:.2f} s, oldest row -> indexed "
                  f"{row['oldest_row_to_indexed_s']:.2f} s ({st['segments']} segment(s) then)"
                  + (" TIMED OUT" if timed_out else ""), flush=True)
        # the 4th flush reached CompactionPolicy.min_segments: wait for that background merge to publish
        merge = None
        if flushes >= MIN_SEGMENTS:
            wall_flush = rows_out[MIN_SEGMENTS - 1]["wall_flush_end"]
            while True:
                done = [v for v in tbl.versions() if v.get("change") == "compact"]
                if done:
                    st = tbl.stats()
                    merge = {"published_s_after_flush": done[0]["time"].timestamp() - wall_flush,
                             "rows": done[0].get("rows"), "segments_then": done[0].get("segments"),
                             "segments_now": st["segments"], "indexed_segments_now": st["indexed_segments"]}
                    break
                if time.time() - wall_flush > INDEX_TIMEOUT_S:
                    merge = {"published_s_after_flush": None, "timed_out": True}
                    break
                time.sleep(max(poll_s, 0.05))
            print(f"  {size_mib:3d} MiB background merge published "
                  + (f"{merge['published_s_after_flush']:.2f} s after flush {MIN_SEGMENTS} ({merge['segments_then']} "
                     f"segment(s) then; now {merge['segments_now']}, {merge['indexed_segments_now']} indexed)"
                     if not merge.get("timed_out") else "TIMED OUT"), flush=True)
        final = tbl.stats()
        versions = [v.get("change") for v in tbl.versions()]
    finally:
        db.close()
    shutil.rmtree(path, ignore_errors=True)
    f2i = [r["flush_to_indexed_s"] for r in rows_out]
    for r in rows_out:
        r.pop("wall_flush_end")
    return {"memtable_mib": size_mib, "flushes": rows_out, "final_stats": final, "merge": merge,
            "compactions_published": versions.count("compact"),
            "median_rows": float(np.median([r["rows_flushed"] for r in rows_out])),
            "median_flush_to_indexed_s": float(np.median(f2i)), "max_flush_to_indexed_s": float(np.max(f2i)),
            "median_oldest_row_to_indexed_s": float(np.median([r["oldest_row_to_indexed_s"] for r in rows_out])),
            "median_flush_add_ms": float(np.median([r["flush_add_ms"] for r in rows_out]))}


# ============================================================================ main
def parse_args(argv=None):
    p = parser(__doc__)
    add_run_args(p, "compaction", quick="20K rows, 200 queries, small memtables: a sanity check",
                 queries="queries per search pass (default 1,000; --quick 200)")
    p.add_argument("--segments", type=int, help="segments of the table to compact (default 10; --quick 4, so each "
                   "holds 5,000 rows: omendb scans segments of <= 4,096 rows exactly even when indexed)")
    p.add_argument("--idle-passes", type=int, default=3, help="passes over the queries when idle (default %(default)s)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   help="memtable sizes in MiB for part 4 (default 8,32,64; --quick 4,8,16)")
    p.add_argument("--flushes", type=int, default=5, help="flushes per size in part 4 (default %(default)s)")
    p.add_argument("--poll-ms", type=float, default=10.0, help="stats() poll interval in part 4 (default %(default)s)")
    args = p.parse_args(argv)
    run_defaults(args)
    if args.sizes is None:
        args.sizes = [4, 8, 16] if args.quick else [8, 32, 64]
    if args.segments is None:
        args.segments = 4 if args.quick else 10
    if args.segments < 2:
        p.error("--segments must be >= 2")
    if args.rows // args.segments < MIN_ROWS:
        p.error(f"each segment needs >= {MIN_ROWS} rows to be indexed: lower --segments or raise --rows")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with Run(args, "compaction", machine) as run:
        res, workdir = run.res, run.workdir
        print(f"loading {args.rows:,} rows, {args.queries:,} queries from {args.data}", flush=True)
        base, X, Q, dim, _ = load_dataset(args.data, args.rows, args.queries)
        data = float32_table(base, X, dataset_schema(dim))
        res["dim"] = dim
        gt = data["id"].to_numpy()[exact_topk(X, Q, K, normalize=True)]
        del X, base

        print(f"0. building a table of {args.segments} indexed segments", flush=True)
        pristine = workdir / "pristine"
        res["build"] = build_segmented(pristine, data, args.segments)
        bs = res["build"]["stats"]
        print(f"  {bs['segments']} segments ({res['build']['rows_per_segment']:,} rows each), "
              f"{bs['indexed_segments']} indexed; index builds {res['build']['index_build_s']:.2f} s", flush=True)
        copies = {name: workdir / name for name in ("during", "indexed", "merge-only")}
        for p in copies.values():
            shutil.copytree(pristine, p)
        shutil.rmtree(pristine)

        print("1. searches while compact() runs", flush=True)
        res["during"] = bench_during(copies["during"], Q, gt, args.idle_passes)
        shutil.rmtree(copies["during"], ignore_errors=True)

        print("2. compaction throughput (idle)", flush=True)
        res["throughput"] = []
        for name, build in (("merge-only", False), ("indexed", True)):
            r = bench_throughput(copies[name], build)
            res["throughput"].append(r)
            print(f"  build_indexes={build}: {r['rows_merged']:,} rows from {r['segments_before']} segments in "
                  f"{r['seconds']:.2f} s = {r['rows_per_s']:,.0f} rows/s -> {r['segments_after']} segment(s), "
                  f"{r['indexed_segments_after']} indexed", flush=True)
        shutil.rmtree(copies["merge-only"], ignore_errors=True)

        print("3. disk: delete half, compact, cleanup", flush=True)
        res["disk"] = bench_disk(copies["indexed"], Q)
        d = res["disk"]
        print(f"  bytes {d['bytes_before']:,} (after deleting {d['deleted']:,} rows) -> {d['bytes_after_compact']:,} "
              f"after compact ({d['compact_s']:.2f} s) -> {d['bytes_after']:,} after cleanup "
              f"({d['ratio']:.2f}x); count ok {d['count_ok']}", flush=True)
        shutil.rmtree(copies["indexed"], ignore_errors=True)

        print(f"4. write -> indexed with background services on (memtable {args.sizes} MiB, {args.flushes} flushes)",
              flush=True)
        res["to_indexed"] = [bench_to_indexed(workdir, data, size, args.flushes, args.poll_ms / 1e3)
                             for size in args.sizes]

        dur = res["during"]
        res["summary"] = {"p99_ratio": dur["p99_ratio"], "p99_ok": bool(dur["p99_ratio"] is not None
                                                                       and dur["p99_ratio"] <= P99_TARGET),
                          "recall_during": dur["during"]["recall"], "recall_idle": dur["idle"]["recall"],
                          "compact_error": dur["during"]["error"],
                          "merge_rows_per_s": {("indexed" if r["build_indexes"] else "merge_only"): r["rows_per_s"]
                                               for r in res["throughput"]},
                          "disk_ratio": res["disk"]["ratio"]}
        run.finish(markdown)
    return 0


# ============================================================================ report
def markdown(res: dict) -> str:
    a, s, b = res["args"], res["summary"], res["build"]
    dur = res["during"]
    idle, during, after = dur["idle"], dur["during"], dur["after"]
    L = title("omendb compaction benchmark", a["quick"], res["command"]) + [
         f"{a['rows']:,} rows x {res['dim']} dims (pypi-minilm-100k, float32), cosine, k={K}, "
         f"`HnswConfig(m={M}, ef_construction={EF_CONSTRUCTION}, min_rows={MIN_ROWS})`, default ef_search. "
         f"The table to compact: {b['stats']['segments']} segments of {b['rows_per_segment']:,} rows (explicit "
         f"`flush()` after each chunk, 1 GiB memtable, `compaction=False`), {b['stats']['indexed_segments']} indexed "
         f"(builds took {b['index_build_s']:.2f} s); each part starts from its own copy of that folder.", ""]
    if b["rows_per_segment"] <= b.get("exact_scan_rows", 4096):
        L += [f"**Segments of {b['rows_per_segment']:,} rows are <= {b.get('exact_scan_rows', 4096):,}: omendb's planner "
              "scans them exactly, so the idle phase below measures exact scans, not HNSW.**", ""]
    L += ["## Targets", "", "| check | measured | target | met |", "| --- | ---: | ---: | :---: |",
          f"| search p99 while `compact()` runs / idle p99 | {f2(dur['p99_ratio'])}x ({f3(during['p99_ms'])} vs "
          f"{f3(idle['p99_ms'])} ms) | <= {P99_TARGET:g}x | {yes(s['p99_ok'])} |", ""]
    L += ["## 1. Single-query search while compacting", "",
          f"Idle: {a['idle_passes']} passes over {a['queries']:,} queries ({WARMUP} warm-up). While compacting: "
          "`tbl.compact()` in a thread (merge all segments into one, build its HNSW index, publish), this thread "
          "searching back to back until it returns. After: the merged segment, same passes as idle. "
          "Recall@10 vs an exact NumPy top-10.", "",
          "| phase | segments | searches | p50 ms | p99 ms | max ms | recall@10 | short answers |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
          f"| idle | {dur['stats_before']['segments']} | {idle['n']:,} | {f3(idle['p50_ms'])} | {f3(idle['p99_ms'])} | "
          f"{f2(idle['max_ms'])} | {f4(idle['recall'])} | {idle['short']} |",
          f"| during `compact()` ({f2(during['compact_s'])} s) | {dur['stats_before']['segments']} -> "
          f"{dur['stats_after']['segments']} | {during['n']:,} | {f3(during['p50_ms'])} | {f3(during['p99_ms'])} | "
          f"{f2(during['max_ms'])} | {f4(during['recall'])} | {during['short']} |",
          f"| after | {dur['stats_after']['segments']} ({dur['stats_after']['indexed_segments']} indexed) | "
          f"{after['n']:,} | {f3(after['p50_ms'])} | {f3(after['p99_ms'])} | {f2(after['max_ms'])} | "
          f"{f4(after['recall'])} | {after['short']} |", ""]
    if during.get("error"):
        L += [f"**compact() failed: {during['error']}**", ""]
    if during.get("timeline"):
        L += ["Latency over the compaction, by tenth of its duration (p50 / p99 ms, searches):", "",
              "| " + " | ".join(f"{t['from_s']:.1f}-{t['to_s']:.1f} s" for t in during["timeline"]) + " |",
              "| " + " | ".join("---:" for _ in during["timeline"]) + " |",
              "| " + " | ".join(f"{f2(t['p50_ms'])} / {f2(t['p99_ms'])} ({t['n']})" for t in during["timeline"]) + " |",
              ""]
    L += ["## 2. Compaction throughput (idle)", "",
          "| build_indexes | rows merged | segments | compact() s | rows/s | after: segments / indexed |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["throughput"]:
        L.append(f"| {r['build_indexes']} | {r['rows_merged']:,} | {r['segments_before']} | {r['seconds']:.2f} | "
                 f"{r['rows_per_s']:,.0f} | {r['segments_after']} / {r['indexed_segments_after']} |")
    L += ["", "`build_indexes=True`: the merged segment's HNSW index is built before the merge is published (the "
          "default), so the time is mostly that build; `build_indexes=False`: read the sources, write the merged "
          f"segment, publish. Under search load (part 1) the same merge took {f2(during['compact_s'])} s.", ""]
    d = res["disk"]
    L += ["## 3. Disk given back (delete half, compact, cleanup)", "",
          f"On the merged, indexed table of part 2: `cleanup()` first (freed {d['pre_cleanup']['bytes_freed']:,} "
          f"bytes of the pre-merge files), then `delete()` of every even id ({d['deleted']:,} rows, "
          f"{d['delete_s']:.2f} s), `compact()` ({d['compact_s']:.2f} s: rewrite without the deleted rows + index "
          f"build), `cleanup()` ({d['cleanup_s']:.2f} s).", "",
          "| state | stats()['bytes'] | MiB |", "| --- | ---: | ---: |",
          f"| before delete | {d['bytes_start']:,} | {mib(d['bytes_start'])} |",
          f"| after delete (before compact) | {d['bytes_before']:,} | {mib(d['bytes_before'])} |",
          f"| after compact() | {d['bytes_after_compact']:,} | {mib(d['bytes_after_compact'])} |",
          f"| after cleanup() | {d['bytes_after']:,} | {mib(d['bytes_after'])} |", "",
          f"After / before: {d['ratio']:.2f}x. cleanup(): {d['cleanup']}. Rows afterwards {d['count_after']:,} "
          f"({'ok' if d['count_ok'] else '**wrong**'}); deleted ids or short answers in 50 searches: "
          f"{d['deleted_or_short_in_50_searches']}.", ""]
    L += ["## 4. Write -> indexed (background index builder and compaction on)", "",
          f"Fresh database per memtable size, `omendb.open(path, memtable_bytes=size)` (fsync on, default "
          f"`CompactionPolicy()`: merge at 4 small segments), {ADD_BATCH:,}-row durable adds until one flushes, then "
          f"`stats()` polled every {a['poll_ms']:g} ms (no writes) until every flushed row is indexed; "
          f"{a['flushes']} flushes per size; then no writes until the background merge that flush {MIN_SEGMENTS} "
          "started is published (its index is built before it publishes). Rows are searchable (exact scan) as soon "
          "as `add` returns; this is the time until they are in an HNSW graph. Flushes from the 4th on race the "
          "background merge (index builder and compaction are separate threads on the same cores).", "",
          "| memtable MiB | rows / flush | flushing add ms (median) | flush -> indexed s (median / max) | "
          f"oldest row -> indexed s (median) | flush {MIN_SEGMENTS} -> background merge published s |",
          "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["to_indexed"]:
        mg = r.get("merge") or {}
        merge_txt = ("—" if not mg else "**timed out**" if mg.get("timed_out") else
                     f"{mg['published_s_after_flush']:.2f} ({mg['segments_then']} segments after it, "
                     f"{mg['indexed_segments_now']} of {mg['segments_now']} indexed at the end)")
        L.append(f"| {r['memtable_mib']} | {r['median_rows']:,.0f} | {r['median_flush_add_ms']:.1f} | "
                 f"{r['median_flush_to_indexed_s']:.2f} / {r['max_flush_to_indexed_s']:.2f} | "
                 f"{r['median_oldest_row_to_indexed_s']:.2f} | {merge_txt} |")
    L += ["", "Per flush:", "",
          "| memtable MiB | flush | rows | fill s | flushing add ms | flush -> indexed s | oldest row -> indexed s | "
          "segments at flush -> when indexed |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["to_indexed"]:
        for f in r["flushes"]:
            L.append(f"| {r['memtable_mib']} | {f['flush']} | {f['rows_flushed']:,} | {f['fill_s']:.2f} | "
                     f"{f['flush_add_ms']:.1f} | {f['flush_to_indexed_s']:.2f}{' (timed out)' if f['timed_out'] else ''} | "
                     f"{f['oldest_row_to_indexed_s']:.2f} | {f['segments_at_flush']} -> {f['segments_when_indexed']} |")
    L.append("")
    m = res["machine"]
    libraries = (f"Python {m['python']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}, faiss {m['faiss']} "
                 f"({m['faiss_omp_threads']} OpenMP threads), psutil {m['psutil']}")
    L += machine_section(m, res["wall_s"], libraries) + [""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
