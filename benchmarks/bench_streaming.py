#!/usr/bin/env python
"""Streaming benchmark: single-query search latency while rows stream in, against the same table idle.

On pypi-minilm-100k (``--rows`` base rows, default 100,000 x 384 unit vectors, cosine), k=10,
default options (``omendb.open(path)``: durable adds, background flushes, index builds and
compaction; default index):

0. The base rows are added in 10,000-row batches, then ``wait_for_index()`` until
   compaction has nothing left to do. The folder is copied once per phase, so every phase
   starts from the same indexed, idle table.
1. Per phase, on its own copy: **idle** single queries ``tbl.search(q, k=10, columns=["id"])``
   over the dataset's queries (``--idle-passes`` passes), p50/p99/max; then the **stream**:
   a writer thread adds 1,000-row batches of new rows (mixtures of the dataset's vectors:
   a random convex pair plus noise of norm ~0.05, renormalised) for ``--seconds`` while this
   thread runs the same single queries back to back. Phases: ``--rate`` rows/s (default
   20,000; each batch waits for its due time) and ``max`` (no pacing: as fast as the
   machine takes them, at most ``--max-rows`` rows). Reported: search p50/p99/max during
   the stream and their ratios to idle, rows/s achieved, the adds' own latency, and
   recall@10 right after the stream (nothing waited for) against the exact top-10 over
   every row, base and streamed.
2. After the paced stream, with no more writes: latency once the fresh graphs cover the
   streamed rows, when ``wait_for_index()`` returns, while the compaction after it runs,
   and settled (the same rows, indexed ever better: where the stream's cost comes from).

Targets (issue 18): at 20,000 rows/s, p50 <= 2x and p99 <= 4x idle; recall@10 >= 0.95.

Results: benchmarks/results/streaming.json and streaming.md (``--quick``: streaming-quick.*).

    python benchmarks/bench_streaming.py            # 100K base rows, 20 s streams; run it alone
    python benchmarks/bench_streaming.py --quick    # 20K rows, 5 s streams: a sanity check
    python benchmarks/bench_streaming.py --query-rate 200 --out benchmarks/results/streaming-200qps
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
from bench_scale import mixtures  # (the same mixtures as the scale benchmark: convex pairs plus noise)
from _harness import (WARMUP, Run, add_run_args, dataset_schema, exact_topk, f2, f3, f4, float32_table,
                      float32_vectors, lat_summary, load_dataset, machine_info, machine_section, now_ns, parser,
                      recall_at_k, run_defaults, title, yes)

TABLE = "pypi"
K = 10
BATCH = 1_000
BASE_BATCH = 10_000
STREAM_SEED = 23
#: Searches per phase at most (the loop also ends with the stream).
MAX_SEARCHES = 200_000
P50_TARGET, P99_TARGET, RECALL_TARGET = 2.0, 4.0, 0.95


def build_base(path: Path, data) -> dict:
    """The base table, indexed and settled; seconds taken."""
    import omendb

    t0 = time.time()
    with omendb.open(path) as db:
        tbl = db.create_table(TABLE, schema=dataset_schema(data.dim), metric="cosine")
        base = float32_table(data.base, data.X, dataset_schema(data.dim))
        for s in range(0, base.num_rows, BASE_BATCH):
            tbl.add(base.slice(s, BASE_BATCH))
        assert tbl.wait_for_index(timeout=3600), "wait_for_index timed out"
        settle_s = _settle(tbl)
        stats = tbl.stats()
    return {"seconds": time.time() - t0, "settle_s": settle_s, "segments": stats["segments"]}


def _settle(tbl, timeout_s: float = 3600.0) -> float:
    """Wait until background compaction has nothing left to merge and every segment is indexed
    (the benchmark looks inside: there is no public call for this)."""
    t0 = time.time()
    compactor = tbl._compactor
    while time.time() - t0 < timeout_s:
        assert tbl.wait_for_index(timeout=timeout_s)
        with compactor._lock:
            idle = not compactor._plan(force=False)
        if idle and tbl.wait_for_index(timeout=0):
            return time.time() - t0
        time.sleep(0.5)
    raise SystemExit("compaction did not settle")


class Writer(threading.Thread):
    """Adds ``rows`` in BATCH-row batches, each at its due time for ``rate`` rows/s (None: at
    once), until the rows run out or ``seconds`` pass."""

    def __init__(self, tbl, rows, rate: float | None, seconds: float) -> None:
        super().__init__(daemon=True)
        self.tbl, self.rows, self.rate, self.seconds = tbl, rows, rate, seconds
        self.added = 0
        self.add_ns: list[int] = []
        self.behind_s = 0.0  # how late the last batch started against its due time
        self.error: BaseException | None = None
        self.elapsed_s = 0.0
        self.cpu_s = 0.0

    def run(self) -> None:
        cpu0 = time.thread_time()
        t0 = time.perf_counter()
        try:
            for n, s in enumerate(range(0, self.rows.num_rows, BATCH)):
                now = time.perf_counter() - t0
                if now >= self.seconds:
                    break
                if self.rate:
                    due = n * BATCH / self.rate
                    if due > now:
                        time.sleep(due - now)
                    self.behind_s = max(0.0, time.perf_counter() - t0 - due)
                started = now_ns()
                batch = self.rows.slice(s, BATCH)
                self.tbl.add(batch)
                self.added += batch.num_rows
                self.add_ns.append(now_ns() - started)
        except BaseException as exc:  # recorded and re-raised by the phase
            self.error = exc
        self.elapsed_s = time.perf_counter() - t0
        self.cpu_s = time.thread_time() - cpu0  # (its /proc entry is gone once it ends)


def single_queries(tbl, Q: np.ndarray, passes: int) -> np.ndarray:
    """Latencies (ns) of ``passes`` passes of single-query searches over ``Q``."""
    for q in Q[:WARMUP]:
        tbl.search(q, k=K, columns=["id"])
    lat = []
    for _ in range(passes):
        for q in Q:
            t = now_ns()
            tbl.search(q, k=K, columns=["id"])
            lat.append(now_ns() - t)
    return np.asarray(lat, dtype=np.int64)


def run_phase(name: str, path: Path, data, stream, rate: float | None, args) -> dict:
    """Idle, then the stream, on the table at ``path``; recall right after the stream."""
    import omendb

    Q = data.Q
    out: dict = {"phase": name, "rate_asked": rate}
    db = omendb.open(path)
    try:
        tbl = db.open_table(TABLE)
        idle = single_queries(tbl, Q, args.idle_passes)
        out["idle"] = lat_summary(idle)
        writer = Writer(tbl, stream, rate, args.seconds)
        lat, at = [], []
        cpu_before = thread_cpu()
        t0 = time.perf_counter()
        writer.start()
        i = 0
        pace = 1.0 / args.query_rate if args.query_rate else 0.0
        while writer.is_alive() and i < MAX_SEARCHES:
            q = Q[i % len(Q)]
            if pace:  # an open loop: each query at its due time, however long the last one took
                wait = t0 + i * pace - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            started = now_ns()
            tbl.search(q, k=K, columns=["id"])
            lat.append(now_ns() - started)
            at.append(time.perf_counter() - t0)
            i += 1
        writer.join()
        out["cpu_s"] = _cpu_during(cpu_before, thread_cpu(), {threading.get_native_id(): "search (this thread)"})
        out["cpu_s"]["writer"] = round(writer.cpu_s, 2)
        out["searched_by"] = searched_by(tbl)
        if writer.error is not None:
            raise writer.error
        during = np.asarray(lat, dtype=np.int64)
        out["stream"] = lat_summary(during)
        out["stream"]["seconds"] = writer.elapsed_s
        out["per_second"] = _per_second(np.asarray(at), during)
        out["rows_added"] = writer.added
        out["rows_per_s"] = writer.added / writer.elapsed_s if writer.elapsed_s else None
        out["add"] = lat_summary(writer.add_ns)
        out["last_batch_behind_s"] = writer.behind_s
        stats = tbl.stats()
        out["stats_after_stream"] = {key: stats.get(key) for key in
                                     ("rows", "segments", "unindexed_segments", "memtable_rows", "unindexed_rows")}
        found = [tbl.search(q, k=K, columns=["id"])["id"].to_numpy() for q in Q]
        all_vectors = np.concatenate([data.X, _vectors(stream, writer.added)])
        truth = exact_topk(all_vectors, Q, K, normalize=True)  # by cosine, as the table; row positions
        ids = np.concatenate([data.base["id"].to_numpy(), stream["id"].to_numpy()[:writer.added]])
        out["recall_after_stream"] = recall_at_k(found, ids[truth], K)
        out["p50_ratio"] = out["stream"]["p50_ms"] / out["idle"]["p50_ms"]
        out["p99_ratio"] = out["stream"]["p99_ms"] / out["idle"]["p99_ms"]
        if rate:  # (the paced phase: what the same rows cost once the background work caught up)
            out["after"] = after_stream(tbl, Q)
        t = time.time()
    finally:
        db.close()
    out["close_s"] = time.time() - t
    return out


#: Seconds the catch-up steps after a stream may take at most.
CATCH_UP_LIMIT_S = 900.0


def after_stream(tbl, Q: np.ndarray) -> dict:
    """Once the stream ends, with no more writes: search latency (a) once the fresh graphs
    cover the streamed rows, (b) when ``wait_for_index()`` returns, (c) while the
    compaction that follows runs (searches back to back until it settles) and (d) settled.
    The rows are the same in all four: what differs is how they are indexed."""
    out: dict = {}

    def measure(label: str, started: float) -> None:
        lat = single_queries(tbl, Q, 1)
        out[label] = {"waited_s": time.time() - started, "searched_by": searched_by(tbl),
                      "segments": tbl.stats()["segments"], **lat_summary(lat)}
        print(f"  {label}: after {out[label]['waited_s']:.0f} s, p50 {out[label]['p50_ms']:.3f} ms, "
              f"p99 {out[label]['p99_ms']:.3f} ms, {out[label]['segments']} segments, "
              f"{out[label]['searched_by']}", flush=True)

    t = time.time()
    while tbl._fresh._next_step() is not None and time.time() - t < CATCH_UP_LIMIT_S:
        time.sleep(0.2)  # (the fresh indexer is internal: this looks inside, as a test would)
    measure("fresh graphs caught up", t)
    t = time.time()
    assert tbl.wait_for_index(timeout=CATCH_UP_LIMIT_S), "wait_for_index timed out"
    measure("wait_for_index returned", t)
    t, lat = time.time(), []
    while _compacting(tbl) and time.time() - t < CATCH_UP_LIMIT_S and len(lat) < MAX_SEARCHES:
        started = now_ns()
        tbl.search(Q[len(lat) % len(Q)], k=K, columns=["id"])
        lat.append(now_ns() - started)
    out["during compaction"] = {"seconds": time.time() - t, **(lat_summary(np.asarray(lat)) if lat else {"n": 0})}
    assert tbl.wait_for_index(timeout=CATCH_UP_LIMIT_S)
    measure("settled", t)
    return out


def _compacting(tbl) -> bool:
    """Whether background compaction has a merge to do or doing (looks inside: there is no public call)."""
    compactor = tbl._compactor
    with compactor._jobs_lock:
        if compactor._jobs:
            return True
    return bool(compactor._plan(force=False))


def thread_cpu() -> dict:
    """CPU seconds so far of every thread of this process, by thread id (from /proc), and
    of the whole process (``"process"``); names of the Python threads under ``"names"``."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    out: dict = {"names": {t.native_id: t.name for t in threading.enumerate()}}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    times = os.times()
    out["process"] = times.user + times.system
    return out


#: Threads Python does not name: the BLAS library's workers (exact scans of a search) and
#: OpenMP's (builds, merges).
UNNAMED = "other (OpenMP workers)"


def _cpu_during(before: dict, after: dict, named: dict) -> dict:
    """CPU seconds each thread used between two :func:`thread_cpu` readings, by name; the
    threads Python does not name summed as :data:`UNNAMED`."""
    names = {**after["names"], **before["names"], **named}
    used: dict = {"process": round(after["process"] - before["process"], 2)}
    for tid, total in after.items():
        if tid in ("names", "process"):
            continue
        name = names.get(tid, UNNAMED)
        used[name] = round(used.get(name, 0.0) + total - before.get(tid, 0.0), 2)
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))


def searched_by(tbl) -> dict:
    """Rows of the table by how a search reaches them now: the segments' own graphs, fresh
    graphs (memtables and segments), or the exact scan."""
    state = tbl.core.state
    out = {"own graph": 0, "fresh graph": 0, "exact scan": 0}
    for handle in state.segments:
        rows = handle.entry.rows
        if handle.entry.index_file is not None:
            out["own graph"] += rows
        else:
            covered = 0 if handle.provisional is None else handle.provisional.rows
            out["fresh graph"] += covered
            out["exact scan"] += rows - covered
    for memtable in state.memtables():
        covered = 0 if memtable.graph is None else memtable.graph.rows
        out["fresh graph"] += covered
        out["exact scan"] += len(memtable) - covered
    return out


def _vectors(stream, rows: int) -> np.ndarray:
    flat = stream["vector"].combine_chunks().flatten().to_numpy()
    return flat.reshape(-1, stream.schema.field("vector").type.list_size)[:rows]


def _per_second(at: np.ndarray, lat_ns: np.ndarray) -> list[dict]:
    """p50 / p99 / max per second of the stream (where the slow searches fall)."""
    rows = []
    for second in range(int(at.max()) + 1 if at.size else 0):
        sel = lat_ns[(at >= second) & (at < second + 1)]
        if sel.size:
            s = lat_summary(sel)
            rows.append({"second": second, "n": s["n"], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                         "max_ms": s["max_ms"]})
    return rows


def stream_rows(data, n: int, first_id: int):
    """``n`` new rows: mixture vectors, the name and summary of one of their parents."""
    import pyarrow as pa

    rng = np.random.default_rng(STREAM_SEED)
    X = mixtures(data.X, n, rng)
    parents = rng.integers(0, data.base.num_rows, n)
    return pa.table({"id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
                     "name": data.base["name"].take(parents), "summary": data.base["summary"].take(parents),
                     "vector": float32_vectors(X)}, schema=dataset_schema(data.dim))


def markdown(r: dict) -> str:
    a = r["args"]
    lines = title("Streaming: search while rows stream in", a["quick"], r["command"])
    lines += [f"Base table: {r['rows']:,} rows of pypi-minilm-100k (384-d, cosine), default options, "
              f"indexed and settled in {r['base']['seconds']:.0f} s ({r['base']['segments']} segment(s)); "
              f"each phase starts from a copy of it. Streams: {BATCH:,}-row durable adds for "
              f"{a['seconds']:g} s while one thread runs single queries (k={K}, `columns=['id']`) "
              + (f"at {a['query_rate']:g} per second (an open loop)." if a.get("query_rate") else "back to back."),
              "", "| phase | rows/s achieved | rows added (s) | idle p50 / p99 ms | stream p50 / p99 / max ms | "
              "p50 ratio | p99 ratio | add p50 / p99 ms | recall@10 after | searches |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in r["phases"]:
        i, s, w = p["idle"], p["stream"], p["add"]
        lines.append(f"| {p['phase']} | {p['rows_per_s']:,.0f} | {p['rows_added']:,} ({s['seconds']:.1f}) | "
                     f"{f3(i['p50_ms'])} / "
                     f"{f3(i['p99_ms'])} | {f3(s['p50_ms'])} / {f3(s['p99_ms'])} / {f2(s['max_ms'])} | "
                     f"{p['p50_ratio']:.2f}x | {p['p99_ratio']:.2f}x | {f2(w['p50_ms'])} / {f2(w['p99_ms'])} | "
                     f"{f4(p['recall_after_stream'])} | {s['n']:,} |")
    lines += ["", "## Targets (issue 18)", "", "| target | measured | met |", "| --- | --- | :---: |"]
    paced = next((p for p in r["phases"] if p["rate_asked"]), None)
    if paced:
        lines.append(f"| p50 <= {P50_TARGET:g}x idle at {paced['rate_asked']:,.0f} rows/s | "
                     f"{paced['p50_ratio']:.2f}x | {yes(paced['p50_ratio'] <= P50_TARGET)} |")
        lines.append(f"| p99 <= {P99_TARGET:g}x idle at {paced['rate_asked']:,.0f} rows/s | "
                     f"{paced['p99_ratio']:.2f}x | {yes(paced['p99_ratio'] <= P99_TARGET)} |")
        lines.append(f"| rate sustained | {paced['rows_per_s']:,.0f} rows/s | "
                     f"{yes(paced['rows_per_s'] >= 0.95 * paced['rate_asked'])} |")
    for p in r["phases"]:
        lines.append(f"| recall@10 >= {RECALL_TARGET} after the {p['phase']} stream | {f4(p['recall_after_stream'])} "
                     f"| {yes(p['recall_after_stream'] >= RECALL_TARGET)} |")
    for p in r["phases"]:
        lines += ["", f"### {p['phase']}: search latency per second of the stream", "",
                  "| second | searches | p50 ms | p99 ms | max ms |", "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {x['second']} | {x['n']} | {f3(x['p50_ms'])} | {f3(x['p99_ms'])} | {f2(x['max_ms'])} |"
                  for x in p["per_second"]]
        st = p["stats_after_stream"]
        lines += ["", f"After the stream: {st}; close (flush) took {p['close_s']:.1f} s.",
                  f"Rows by how a search reached them at the end of the stream: {p['searched_by']}.",
                  f"CPU seconds used during the stream ({p['stream']['seconds']:.1f} s, 2 cores), by thread: "
                  f"{p['cpu_s']} (`{UNNAMED}`: every thread Python does not name, OpenBLAS's workers of the "
                  "searches' exact scans included)."]
        if p.get("after"):
            after = p["after"]
            lines += ["", f"### {p['phase']}: the same rows once background work caught up (no more writes)", "",
                      "| step | waited s | segments | p50 ms | p99 ms | max ms | rows by how a search reached them |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
            for label in ("fresh graphs caught up", "wait_for_index returned", "settled"):
                x = after[label]
                lines.append(f"| {label} | {x['waited_s']:.0f} | {x['segments']} | {f3(x['p50_ms'])} | "
                             f"{f3(x['p99_ms'])} | {f2(x['max_ms'])} | {x['searched_by']} |")
            during = after["during compaction"]
            lines += ["", f"Searches back to back while the compaction after `wait_for_index` ran "
                          f"({during['seconds']:.0f} s): "
                      + (f"{during['n']:,} searches, p50 {f3(during['p50_ms'])} ms, p99 {f3(during['p99_ms'])} "
                         f"ms, max {f2(during['max_ms'])} ms." if during["n"] else "none (nothing left to merge).")]
    lines += [""] + machine_section(r["machine"], r["wall_s"], "faiss " + str(r["machine"].get("faiss")))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = parser(__doc__)
    add_run_args(p, "streaming", "20K base rows, 5 s streams, one idle pass (a sanity check)",
                 "queries (default 1,000)")
    p.add_argument("--rate", type=float, default=20_000, help="rows/s of the paced stream (default %(default)s)")
    p.add_argument("--seconds", type=float, help="seconds each stream runs (default 20; --quick 5)")
    p.add_argument("--max-rows", type=int, default=1_000_000,
                   help="rows the unpaced stream may add at most (default %(default)s)")
    p.add_argument("--paced-only", action="store_true", help="skip the unpaced phase")
    p.add_argument("--query-rate", type=float, default=0.0,
                   help="single queries per second during the streams (default 0: back to back)")
    p.add_argument("--idle-passes", type=int, help="passes over the queries when idle (default 3; --quick 1)")
    args = p.parse_args(argv)
    run_defaults(args)
    args.seconds = args.seconds or (5.0 if args.quick else 20.0)
    args.idle_passes = args.idle_passes or (1 if args.quick else 3)

    def libraries() -> dict:
        import faiss

        return {"faiss": faiss.__version__}

    with Run(args, "streaming", lambda w: machine_info(w, libraries)) as run:
        data = load_dataset(args.data, args.rows, args.queries, columns=["id", "name", "summary", "vector"])
        run.res["rows"] = args.rows
        base = run.workdir / "base"
        print(f"building the base table ({args.rows:,} rows)", flush=True)
        run.res["base"] = build_base(base, data)
        paced_rows = int(args.rate * args.seconds) + BATCH
        stream = stream_rows(data, max(paced_rows, min(args.max_rows, 400_000 if args.quick else args.max_rows)),
                             first_id=int(data.base["id"].to_numpy().max()) + 1)
        run.res["phases"] = []
        phases = [(f"{args.rate:,.0f} rows/s", args.rate, paced_rows)]
        if not args.paced_only:
            phases.append(("max", None, args.max_rows))
        for name, rate, rows in phases:
            copy = run.workdir / f"phase-{len(run.res['phases'])}"
            shutil.copytree(base, copy)
            print(f"phase {name}", flush=True)
            result = run_phase(name, copy, data, stream.slice(0, rows), rate, args)
            print(f"  {result['rows_per_s']:,.0f} rows/s, p50 {result['stream']['p50_ms']:.3f} ms "
                  f"({result['p50_ratio']:.2f}x idle), p99 {result['stream']['p99_ms']:.3f} ms "
                  f"({result['p99_ratio']:.2f}x), recall {result['recall_after_stream']:.4f}", flush=True)
            run.res["phases"].append(result)
            shutil.rmtree(copy, ignore_errors=True)
        run.finish(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
