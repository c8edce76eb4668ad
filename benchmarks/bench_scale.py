#!/usr/bin/env python
"""Scale benchmark: N x 384 rows with default options, beside raw faiss and LanceDB in one run.

Data: N rows made as mixtures of pypi-minilm-100k vectors (``w * a + (1 - w) * b`` for a
random pair and ``w`` uniform in [0, 1], plus Gaussian noise of norm ~0.05, renormalised;
not jittered copies, whose near-duplicates make each true top-10 one tight cluster) and
1,000 queries made the same way from another seed. Ground truth: the exact top-10 by
cosine, by brute force over all N rows. The vectors live in a ``.npy`` file that every
process maps, so the data itself never counts into a process's anonymous memory.

Each system runs in its own process, one after the other (never two at once):

1. omendb, default options (``omendb.open(path)``: durable writes, background flushes,
   compaction and index builds; default index ``HnswSq``): rows added in 10,000-row
   batches. Measured: ingest rows/s, time from the first ``add`` to ``wait_for_index()``
   returning (every segment indexed) and to compaction having nothing left to do, peak
   RssAnon and RSS (sampled every 50 ms), bytes on disk (when compaction settled, and once
   the old versions expired: ``keep_versions_for``, 60 s by default),
   and one search every 5 s from another thread all along (the table stays searchable;
   its latency while background work runs).
2. omendb searched from a fresh reader process (``read_only=True``): recall@10 and
   p50/p99 with default options, with ``recall=`` targets, and over an ef sweep.
3. raw faiss ``IndexHNSWFlat`` (M=16, efConstruction=200, 2 threads, inner product on
   the unit vectors) over the same rows held in memory: build seconds, peak RSS,
   recall@10 and p50/p99 over an ef sweep.
4. LanceDB (``--peer-python``, a venv from benchmarks/requirements-peers.txt): the rows
   written in 10,000-row batches, then IVF_HNSW_SQ and IVF_PQ with default settings,
   searched at default ``nprobes`` and more, without and with the ``refine_factor``
   re-ranking LanceDB recommends for quantized indexes; build seconds, peak RSS, disk.

Results: benchmarks/results/scale-<N>.json / .md and scale-<N>.png (recall against p50).

    python benchmarks/bench_scale.py --rows 1000000 --peer-python /path/to/peer/python
    python benchmarks/bench_scale.py --rows 20000 --quick     # a sanity check (~2 minutes)

Only the standard library and NumPy are imported at module level: the LanceDB part runs
under the peer venv's python, where omendb and faiss are absent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (RESULTS, Run, arrow_ids, dir_bytes, f3, f4, lat_summary, machine_info,  # noqa: E402
                      machine_section, md_table, mib, now_ns, pad_ids, parser, recall_at_k, run_child, time_each,
                      venv_versions)

K = 10
M = 16
EF_CONSTRUCTION = 200
DIM = 384
BATCH = 10_000
QUERIES = 1_000
#: Noise added to each mixture before it is renormalised (per coordinate; norm ~0.05).
NOISE = 0.05 / np.sqrt(DIM)
DATA_SEED, QUERY_SEED = 17, 18
OMENDB_EFS = (16, 32, 64, 128, 256, 512)
RECALL_TARGETS = (0.8, 0.9, 0.95, 0.97, 0.99)
FAISS_EFS = (16, 32, 64, 128, 256, 512)
#: LanceDB sweeps: (nprobes, refine_factor); LanceDB's default nprobes is 20.
LANCE_SWEEP = ((20, None), (20, 10), (50, 10), (100, 10), (200, 10))
LANCE_SWEEP_QUICK = ((20, None), (20, 10), (100, 10))
#: Seconds between the searches omendb's build process runs while it ingests and indexes.
PROBE_EVERY_S = 5.0
SAMPLE_EVERY_S = 0.05
CHILD_TIMEOUT_S = 12 * 3600


# ============================================================================ data
def mixtures(X: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors, each a random convex pair of rows of ``X`` plus a little noise."""
    a, b = rng.integers(0, len(X), n), rng.integers(0, len(X), n)
    w = rng.random((n, 1), dtype=np.float32)
    v = w * X[a] + (1 - w) * X[b] + rng.normal(0, NOISE, (n, X.shape[1])).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def make_data(data: Path, rows: int, workdir: Path) -> dict:
    """vectors.npy (rows x 384 float32) and queries.npy in ``workdir``, made in 100,000-row steps."""
    import pyarrow.parquet as pq

    path, queries_path = workdir / "vectors.npy", workdir / "queries.npy"
    base = pq.read_table(data / "base.parquet", columns=["vector"])["vector"].combine_chunks()
    X = np.asarray(base.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, DIM)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    t0 = time.time()
    out = np.lib.format.open_memmap(path, "w+", np.float32, (rows, DIM))
    rng = np.random.default_rng(DATA_SEED)
    for s in range(0, rows, 100_000):
        out[s:s + 100_000] = mixtures(X, min(100_000, rows - s), rng)
    out.flush()
    del out
    np.save(queries_path, mixtures(X, QUERIES, np.random.default_rng(QUERY_SEED)))
    return {"rows": rows, "dim": DIM, "vector_bytes": rows * DIM * 4, "seconds": time.time() - t0,
            "made_from": str(data / "base.parquet"), "noise_norm": 0.05}


def exact_truth(workdir: Path, block: int = 100_000) -> tuple[np.ndarray, float]:
    """Exact top-10 row numbers of every query by cosine (the rows are unit vectors), by brute force."""
    X = np.load(workdir / "vectors.npy", mmap_mode="r")
    Q = np.load(workdir / "queries.npy")
    t0 = time.time()
    best_s = np.full((len(Q), K), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(Q), K), dtype=np.int64)
    for s in range(0, len(X), block):
        scores = Q @ np.asarray(X[s:s + block]).T
        part = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :K]
        best_s, best_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
    return best_i, time.time() - t0


def batches(X: np.ndarray, batch: int = BATCH):
    """(ids, vectors) of ``X`` in ``batch``-row steps, as Arrow arrays over the mapped file."""
    import pyarrow as pa

    for s in range(0, len(X), batch):
        block = np.ascontiguousarray(X[s:s + batch])
        yield (pa.array(np.arange(s, s + len(block), dtype=np.int64)),
               pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), DIM))


# ============================================================================ process memory
class MemorySampler:
    """Peak RssAnon and RSS of this process, read from /proc/self/status every 50 ms."""

    def __init__(self) -> None:
        self.peak = {"rss_anon": 0, "rss": 0}
        self.peak_at: dict[str, str] = {}
        self.phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    out["rss_anon"] = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) * 1024
        return out

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            for key, value in self.now().items():
                if value > self.peak[key]:
                    self.peak[key], self.peak_at[key] = value, self.phase

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        return {"peak_rss_anon_bytes": self.peak["rss_anon"], "peak_rss_bytes": self.peak["rss"],
                "peak_rss_anon_during": self.peak_at.get("rss_anon"), "peak_rss_during": self.peak_at.get("rss")}


# ============================================================================ omendb (main venv)
def omendb_build_role(args) -> dict:
    """Ingest with default options, wait until indexed and settled; memory, disk, probe searches."""
    import omendb

    workdir = Path(args.workdir)
    X = np.load(workdir / "vectors.npy", mmap_mode="r")
    Q = np.load(workdir / "queries.npy")
    path = workdir / "omendb"
    resumed = None
    if args.resume and (path / "t").exists():
        resumed = {}
    else:
        shutil.rmtree(path, ignore_errors=True)
    probes: list[dict] = []
    stop = threading.Event()
    sampler = MemorySampler()
    with sampler:
        t0 = time.time()
        db = omendb.open(path, **_open_options(args))
        if resumed is not None:
            table = db.open_table("t")
            resumed = {"open_s": time.time() - t0, "stats_at_open": table.stats()}
            print(f"  omendb: reopened after an interruption in {resumed['open_s']:.1f} s: "
                  f"{resumed['stats_at_open']['indexed_segments']} of {resumed['stats_at_open']['segments']} "
                  "segments indexed", flush=True)
        else:
            table = db.create_table("t", dim=DIM, metric="cosine")

        def probe() -> None:  # one search every PROBE_EVERY_S, all along: is the table searchable, how fast
            i = 0
            while not stop.wait(PROBE_EVERY_S):
                started = now_ns()
                try:
                    table.search(Q[i % len(Q)], k=K, columns=["id"])
                    probes.append({"t_s": time.time() - t0, "phase": sampler.phase, "ms": (now_ns() - started) / 1e6})
                except Exception as exc:  # recorded: a failed search is a result of the benchmark
                    probes.append({"t_s": time.time() - t0, "phase": sampler.phase, "error": repr(exc)})
                i += 1

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        sampler.phase = "ingest"
        step = max(1, len(X) // BATCH // 20)
        for n, (ids, vectors) in enumerate(batches(X) if resumed is None else ()):
            table.add({"id": ids, "vector": vectors})
            if n % step == 0:
                print(f"  omendb: {ids[-1].as_py() + 1:,} rows added in {time.time() - t0:.0f} s, "
                      f"{table.stats()['segments']} segments, RssAnon {MemorySampler.now()['rss_anon'] / 2**30:.2f} GiB",
                      flush=True)
        ingest_s = time.time() - t0
        if resumed is None:
            _save_progress(workdir, ingest_s=ingest_s)
        sampler.phase = "indexing"
        assert table.wait_for_index(timeout=CHILD_TIMEOUT_S), "wait_for_index timed out"
        indexed_s = time.time() - t0
        indexed_stats = table.stats()
        print(f"  omendb: indexed {indexed_stats['segments']} segments after {indexed_s:.0f} s", flush=True)
        sampler.phase = "compaction"
        settled_s = _wait_until_settled(table, t0)
        stop.set()
        prober.join()
        stats = table.stats()
        disk = dir_bytes(path)
        segments = sorted((h.entry.rows for h in table.core.state.segments), reverse=True)
        sampler.phase = "retention"  # old versions go once older than keep_versions_for (default 60 s)
        t1 = time.time()
        retention_s = _wait_for_retention(path, t1)
        disk_after_retention = dir_bytes(path)
        db.close()
    ok = [p["ms"] for p in probes if "ms" in p]
    probe_phases = {}
    for phase in ("ingest", "indexing", "compaction"):
        lat = [p["ms"] for p in probes if p.get("phase") == phase and "ms" in p]
        if lat:
            probe_phases[phase] = {"n": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                                   "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(max(lat))}
    if resumed is not None:  # the ingest was the interrupted process's; its figures are in the progress file
        ingest_s = _progress(workdir).get("ingest_s")
    return {"rows": len(X), "resumed": resumed, "ingest_s": ingest_s,
            "ingest_rows_per_s": len(X) / ingest_s if ingest_s else None,
            "indexed_s": indexed_s, "settled_s": settled_s, "indexed_stats": indexed_stats, "stats": stats,
            "segment_rows": segments, "disk_bytes_settled": disk, "disk_bytes": disk_after_retention,
            "retention_wait_s": retention_s, **sampler.report(),
            "probes": {"n": len(probes), "failed": [p for p in probes if "error" in p][:5],
                       "failures": sum("error" in p for p in probes),
                       **({"p50_ms": float(np.percentile(ok, 50)), "max_ms": float(max(ok))} if ok else {}),
                       "phases": probe_phases},
            "build_threads": _build_threads(), "options": "omendb.open(path) defaults; create_table(dim=384, "
                                                          "metric='cosine'), default index"}


def _open_options(args) -> dict:
    """``omendb.open`` options: the defaults, but for ``--max-segment-rows``."""
    import omendb

    if not args.max_segment_rows:
        return {}
    return {"compaction": omendb.CompactionPolicy(max_rows=args.max_segment_rows)}


def _progress(workdir: Path) -> dict:
    """What an earlier (perhaps interrupted) run in ``workdir`` measured before it stopped."""
    path = workdir / "progress.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_progress(workdir: Path, **figures) -> None:
    path = workdir / "progress.json"
    path.write_text(json.dumps({**_progress(workdir), **figures}, indent=1, default=str))


def _wait_for_retention(path: Path, t1: float, keep_for_s: float = 60.0, limit_s: float = 300.0) -> float:
    """Seconds until the old versions' files are gone: the directory's size has not changed
    for a whole retention check period (30 s) after the last superseded version expired."""
    from omendb.table.retention import check_period

    last, since = dir_bytes(path), time.time()
    while time.time() - t1 < limit_s:
        time.sleep(1.0)
        now = dir_bytes(path)
        if now != last:
            last, since = now, time.time()
        elif time.time() - t1 > keep_for_s and time.time() - since > check_period(keep_for_s) + 2:
            break
    return time.time() - t1


def _build_threads() -> str:
    from omendb.index.hnsw import build_threads

    return f"{build_threads(False)} / {build_threads(True)}"


def _wait_until_settled(table, t0: float, poll_s: float = 1.0) -> float:
    """Seconds since ``t0`` when background compaction has nothing left to merge (the
    benchmark looks inside: there is no public call for this)."""
    compactor = table._compactor
    while True:
        assert table.wait_for_index(timeout=CHILD_TIMEOUT_S)
        with compactor._lock:  # (held by a running merge)
            idle = not compactor._plan(force=False)
        if idle and table.wait_for_index(timeout=0):
            return time.time() - t0
        time.sleep(poll_s)


def omendb_search_role(args) -> dict:
    """A fresh reader process: default search, recall targets, ef sweep."""
    import omendb

    workdir = Path(args.workdir)
    Q = np.load(workdir / "queries.npy")
    truth = np.load(workdir / "truth.npy")
    t0 = now_ns()
    db = omendb.open(workdir / "omendb", read_only=True)
    table = db.open_table("t")
    open_ms = (now_ns() - t0) / 1e6
    t0 = now_ns()
    table.search(Q[0], k=K, columns=["id"])
    first_ms = (now_ns() - t0) / 1e6

    def series(setting: str, **options) -> dict:
        results, lat = time_each(lambda q: table.search(q, k=K, columns=["id"], **options), Q)
        point = {"setting": setting, "recall": recall_at_k(arrow_ids(results), truth),
                 **lat_summary(lat, brief=True)}
        print(f"  omendb {setting}: recall {point['recall']:.4f} p50 {point['p50_ms']:.3f} ms "
              f"p99 {point['p99_ms']:.3f} ms", flush=True)
        return point

    out = {"open_ms": open_ms, "first_search_ms": first_ms, "default": series("default")}
    out["recall_targets"] = [series(f"recall={r}", recall=r) for r in RECALL_TARGETS]
    out["ef_sweep"] = [series(f"ef={ef}", ef=ef) for ef in OMENDB_EFS]
    out["stats"] = table.stats()
    out["calibration"] = [h.entry.index_calibration for h in table.core.state.segments]
    out.update(MemorySampler.now())
    db.close()
    return out


# ============================================================================ raw faiss (main venv)
def faiss_role(args) -> dict:
    import faiss

    workdir = Path(args.workdir)
    Q = np.load(workdir / "queries.npy")
    truth = np.load(workdir / "truth.npy")
    with MemorySampler() as sampler:
        X = np.array(np.load(workdir / "vectors.npy", mmap_mode="r"))  # in memory, as faiss needs
        faiss.omp_set_num_threads(2)
        index = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        sampler.phase = "build"
        t0 = time.time()
        for s in range(0, len(X), 100_000):
            index.add(X[s:s + 100_000])
            print(f"  faiss: {min(s + 100_000, len(X)):,} rows in {time.time() - t0:.0f} s", flush=True)
        build_s = time.time() - t0
        del X
        sampler.phase = "search"
        faiss.omp_set_num_threads(1)
        sweep = []
        Q2 = Q[:, None, :]
        for ef in FAISS_EFS:
            index.hnsw.efSearch = ef
            results, lat = time_each(lambda q: index.search(q, K)[1][0], Q2)
            point = {"ef": ef, "recall": recall_at_k(pad_ids(results), truth), **lat_summary(lat, brief=True)}
            sweep.append(point)
            print(f"  faiss ef={ef}: recall {point['recall']:.4f} p50 {point['p50_ms']:.3f} ms", flush=True)
    return {"build_s": build_s, "index_bytes_in_memory": int(index.ntotal) * DIM * 4 + int(index.hnsw.neighbors.size()) * 4,
            "ef_sweep": sweep, "threads": 2, "faiss": faiss.__version__, **sampler.report()}


# ============================================================================ LanceDB (peer venv)
def lancedb_role(args) -> dict:
    import pyarrow as pa
    import lancedb
    from lancedb.index import HnswSq, IvfPq

    workdir = Path(args.workdir)
    X = np.load(workdir / "vectors.npy", mmap_mode="r")
    Q = np.load(workdir / "queries.npy")
    truth = np.load(workdir / "truth.npy")
    path = workdir / "lancedb"
    shutil.rmtree(path, ignore_errors=True)
    out: dict = {"version": lancedb.__version__, "configs": []}
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), DIM))])
    with MemorySampler() as sampler:
        sampler.phase = "ingest"
        db = lancedb.connect(str(path))
        t0 = time.time()
        reader = pa.RecordBatchReader.from_batches(
            schema, (pa.record_batch([ids, vectors], schema=schema) for ids, vectors in batches(X)))
        table = db.create_table("t", data=reader)
        out["ingest_s"] = time.time() - t0
        print(f"  lancedb: {len(X):,} rows written in {out['ingest_s']:.0f} s", flush=True)
        sweep = LANCE_SWEEP_QUICK if args.quick else LANCE_SWEEP

        def measure(label: str) -> None:
            for nprobes, refine in sweep:
                def run(q, nprobes=nprobes, refine=refine):
                    query = table.search(q, vector_column_name="vector").distance_type("cosine").limit(K)
                    query = query.nprobes(nprobes)
                    if refine is not None:
                        query = query.refine_factor(refine)
                    return query.select(["id", "_distance"]).to_arrow()

                results, lat = time_each(run, Q)
                point = {"index": label, "nprobes": nprobes, "refine_factor": refine,
                         "recall": recall_at_k(arrow_ids(results), truth), **lat_summary(lat, brief=True)}
                out["configs"].append(point)
                print(f"  lancedb {label} nprobes={nprobes} refine={refine}: recall {point['recall']:.4f} "
                      f"p50 {point['p50_ms']:.3f} ms", flush=True)

        for label, config in (("IVF_HNSW_SQ", HnswSq(distance_type="cosine")),
                              ("IVF_PQ", IvfPq(distance_type="cosine"))):
            sampler.phase = f"build {label}"
            t1 = time.time()
            table.create_index("vector", config=config, replace=True)
            out[label] = {"build_s": time.time() - t1, "disk_bytes": dir_bytes(path)}
            print(f"  lancedb {label}: built in {out[label]['build_s']:.0f} s", flush=True)
            sampler.phase = f"search {label}"
            measure(label)
    out.update(sampler.report())
    out["disk_bytes"] = dir_bytes(path)
    return out


# ============================================================================ report
def p50_at(points: list[dict], target: float) -> dict | None:
    """The fastest point reaching recall ``target``."""
    ok = [p for p in points if p["recall"] >= target]
    return min(ok, key=lambda p: p["p50_ms"]) if ok else None


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    search = res.get("omendb_search") or {}
    if search.get("ef_sweep"):
        pts = search["ef_sweep"]
        ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], "o-", label="omendb (ef sweep)")
        pts = search["recall_targets"]
        ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], "s--", label="omendb (recall= targets)")
        ax.plot([search["default"]["recall"]], [search["default"]["p50_ms"]], "k*", ms=14, label="omendb default")
    faiss = res.get("faiss") or {}
    if faiss.get("ef_sweep"):
        pts = faiss["ef_sweep"]
        ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], "^-", label="raw faiss IndexHNSWFlat")
    lance = res.get("lancedb") or {}
    for label, marker in (("IVF_HNSW_SQ", "v"), ("IVF_PQ", "D")):
        pts = [p for p in lance.get("configs", []) if p["index"] == label]
        if pts:
            ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], marker, ls=":", label=f"LanceDB {label}")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("p50 latency of one query (ms, log scale)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{res['rows']:,} x {DIM} mixture vectors, k=10, one query at a time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(res: dict) -> str:
    rows = res["rows"]
    vector_bytes = rows * DIM * 4
    build, search = res.get("omendb_build") or {}, res.get("omendb_search") or {}
    faiss, lance = res.get("faiss") or {}, res.get("lancedb") or {}
    L = [f"# Scale benchmark: {rows:,} x {DIM}", "",
         f"Command: `{res['command']}`", "",
         f"Data: {res['data']['rows']:,} mixture vectors ({mib(vector_bytes)} MiB float32), {QUERIES:,} mixture "
         f"queries; exact top-10 by brute force ({_seconds(res.get('truth_s'))}). Each system ran alone, in its own "
         "process.", ""]
    resumed = (build or {}).get("resumed")
    if resumed:
        at_open = resumed["stats_at_open"]
        L += [f"**Resumed run.** The first build process was interrupted with "
              f"{at_open['indexed_segments']} of {at_open['segments']} segments indexed "
              f"({at_open['indexed_rows']:,} of {at_open['rows']:,} rows). This run reopened the table "
              f"({resumed['open_s']:.1f} s) and waited for the rest; times to indexed and settled count from the "
              "reopen, and cover only the remaining work.", ""]
    if build and "error" not in build:
        gib, start = 2 ** 30, "reopen" if resumed else "first add"
        L += ["## omendb, default options" + (f" but segments capped at {res['max_segment_rows']:,} rows"
                                              if res.get("max_segment_rows") else ""), "",
              *md_table(["", "value"], "lr", [
                  ["ingest (10,000-row durable adds)", f"{build['ingest_rows_per_s']:,.0f} rows/s ({build['ingest_s']:.0f} s)"
                   if build.get("ingest_s") else "in the interrupted process"],
                  [f"{start} to every segment indexed (`wait_for_index`)", f"{build['indexed_s']:.0f} s"],
                  [f"{start} to compaction settled", f"{build['settled_s']:.0f} s"],
                  ["peak RssAnon (ingest, compaction, indexing)",
                   f"{build['peak_rss_anon_bytes'] / gib:.2f} GiB (during {build['peak_rss_anon_during']})"],
                  ["peak RSS (incl. mapped files)", f"{build['peak_rss_bytes'] / gib:.2f} GiB"],
                  ["segments (rows)", f"{len(build['segment_rows'])}: " + ", ".join(f"{r:,}" for r in build['segment_rows'])],
                  ["disk when compaction settled (old versions still kept)", f"{mib(build['disk_bytes_settled'])} MiB "
                   f"({build['disk_bytes_settled'] / vector_bytes:.2f}x the float32 vectors)"],
                  ["disk once old versions expired (default `keep_versions_for` 60 s; "
                   f"{build['retention_wait_s']:.0f} s later)", f"{mib(build['disk_bytes'])} MiB "
                   f"({build['disk_bytes'] / vector_bytes:.2f}x)"],
                  ["searches while it ran (one every 5 s)", f"{build['probes']['n']} searches, {build['probes']['failures']} failed, "
                   f"p50 {build['probes'].get('p50_ms', 0):.1f} ms, max {build['probes'].get('max_ms', 0):.0f} ms"],
                  ["index build threads (foreground idle / busy)", str(build["build_threads"])],
              ]), ""]
        phases = build["probes"]["phases"]
        if phases:
            L += ["Search latency during background work (one query every 5 s, same process):", "",
                  *md_table(["phase", "searches", "p50 ms", "p99 ms", "max ms"], "lrrrr",
                            [[k, v["n"], f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}", f"{v['max_ms']:.1f}"]
                             for k, v in phases.items()]), ""]
    elif build:
        L += [f"omendb build: {build['error']}", ""]
    if search and "error" not in search:
        L += ["## Search from a fresh reader process", "",
              f"Open {search['open_ms']:.0f} ms, first search {search['first_search_ms']:.1f} ms.", "",
              *md_table(["system", "setting", "recall@10", "p50 ms", "p99 ms"], "llrrr",
                        [["omendb", "default", f4(search["default"]["recall"]), f3(search["default"]["p50_ms"]),
                          f3(search["default"]["p99_ms"])]]
                        + [["omendb", p["setting"], f4(p["recall"]), f3(p["p50_ms"]), f3(p["p99_ms"])]
                           for p in search["recall_targets"] + search["ef_sweep"]]
                        + [["raw faiss HNSWFlat", f"ef={p['ef']}", f4(p["recall"]), f3(p["p50_ms"]), f3(p["p99_ms"])]
                           for p in faiss.get("ef_sweep", [])]
                        + [[f"LanceDB {p['index']}", f"nprobes={p['nprobes']} refine={p['refine_factor']}",
                            f4(p["recall"]), f3(p["p50_ms"]), f3(p["p99_ms"])] for p in lance.get("configs", [])]),
              "", f"![recall against p50]({res['plot']})", ""]
    elif search:
        L += [f"omendb search: {search['error']}", ""]
    L += ["## Side by side", ""]
    table_rows = []
    if build and "error" not in build:
        label = "omendb (default options; resumed: the remaining work only)" if resumed else "omendb (default options)"
        if res.get("max_segment_rows"):
            label = f"omendb (segments capped at {res['max_segment_rows']:,} rows)"
        table_rows.append([label, f"{build['indexed_s']:.0f}", f"{build['peak_rss_anon_bytes'] / 2**30:.2f}",
                           f"{build['peak_rss_bytes'] / 2**30:.2f}", f"{build['disk_bytes'] / vector_bytes:.2f}x"])
    if faiss and "error" not in faiss:
        table_rows.append(["raw faiss IndexHNSWFlat (build only, rows in memory)", f"{faiss['build_s']:.0f}",
                           f"{faiss['peak_rss_anon_bytes'] / 2**30:.2f}", f"{faiss['peak_rss_bytes'] / 2**30:.2f}", "—"])
    for label in ("IVF_HNSW_SQ", "IVF_PQ"):
        if lance.get(label):
            table_rows.append([f"LanceDB {label} (write + build)", f"{lance['ingest_s'] + lance[label]['build_s']:.0f}",
                               f"{lance['peak_rss_anon_bytes'] / 2**30:.2f}", f"{lance['peak_rss_bytes'] / 2**30:.2f}",
                               f"{lance[label]['disk_bytes'] / vector_bytes:.2f}x"])
    L += md_table(["system", "seconds to indexed", "peak RssAnon GiB", "peak RSS GiB", "disk / vectors"], "lrrrr",
                  table_rows) + [""]
    targets = res.get("targets") or {}
    if targets:
        L += ["## Targets (issue 17)" + (" — set for default options: here for information only"
                                         if res.get("max_segment_rows") else ""), "",
              *md_table(["target", "measured", "met"], "llc",
                        [[t["target"], t["measured"], "yes" if t["met"] else "**no**"] for t in targets]), ""]
    if lance.get("error") or faiss.get("error"):
        L += [f"- faiss: {faiss.get('error')}" if faiss.get("error") else "",
              f"- lancedb: {lance.get('error')}" if lance.get("error") else "", ""]
    L += machine_section(res["machine"], res["wall_s"], f"faiss {faiss.get('faiss')}, lancedb {lance.get('version')}")
    return "\n".join(L) + "\n"


def _seconds(value: float | None) -> str:
    return "time not recorded" if value is None else f"{value:.0f} s"


def targets(res: dict) -> list[dict]:
    """Issue 17's targets, as measured in this run."""
    rows, vector_bytes = res["rows"], res["rows"] * DIM * 4
    build, search = res.get("omendb_build") or {}, res.get("omendb_search") or {}
    faiss, lance = res.get("faiss") or {}, res.get("lancedb") or {}
    out = []
    if search.get("default"):
        r = search["default"]["recall"]
        out.append({"target": "default recall@10 >= 0.95", "measured": f4(r), "met": r >= 0.95})
        p50 = search["default"]["p50_ms"]
        out.append({"target": "default p50 <= 1.5 ms (fresh reader)", "measured": f"{p50:.3f} ms", "met": p50 <= 1.5})
    if build.get("peak_rss_anon_bytes"):
        ceiling = 2.5 if rows <= 1_000_000 else 12.0
        g = build["peak_rss_anon_bytes"] / 2 ** 30
        out.append({"target": f"peak RssAnon <= {ceiling} GiB", "measured": f"{g:.2f} GiB", "met": g <= ceiling})
        d = build["disk_bytes"] / vector_bytes
        out.append({"target": "disk <= 1.6x the float32 vectors", "measured": f"{d:.2f}x", "met": d <= 1.6})
        out.append({"target": "searchable throughout (no failed search)", "measured":
                    f"{build['probes']['failures']} of {build['probes']['n']} failed", "met": build["probes"]["failures"] == 0})
    if build.get("indexed_s") and faiss.get("build_s") and not build.get("resumed"):
        ratio = build["indexed_s"] / faiss["build_s"]
        out.append({"target": "first add to indexed <= 1.5x raw faiss HNSWFlat build", "measured": f"{ratio:.2f}x "
                    f"({build['indexed_s']:.0f} s vs {faiss['build_s']:.0f} s)", "met": ratio <= 1.5})
    points = (search.get("ef_sweep") or []) + (search.get("recall_targets") or [])
    if points and lance.get("configs"):
        for recall in (0.9, 0.95):
            ours = p50_at(points, recall)
            theirs = p50_at(lance["configs"], recall)
            if ours and theirs:
                out.append({"target": f"faster than LanceDB at recall {recall}", "measured":
                            f"{ours['p50_ms']:.3f} vs {theirs['p50_ms']:.3f} ms ({theirs['index']})",
                            "met": ours["p50_ms"] < theirs["p50_ms"]})
            elif ours:
                out.append({"target": f"faster than LanceDB at recall {recall}", "measured":
                            f"{ours['p50_ms']:.3f} ms; LanceDB did not reach {recall}", "met": True})
    return out


# ============================================================================ main
def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows to make and load (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer LanceDB settings (for a sanity check)")
    p.add_argument("--peer-python", help="python of a venv with lancedb (benchmarks/requirements-peers.txt)")
    p.add_argument("--systems", default="omendb,faiss,lancedb", help="what to run (default: %(default)s)")
    p.add_argument("--out", type=Path, help="results path without suffix (default benchmarks/results/scale-<rows>)")
    p.add_argument("--workdir", type=Path, help="where data and tables are written (default: a fresh temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--resume", action="store_true",
                   help="after an interrupted run: reuse --workdir's data and truth, reopen its table and wait "
                        "for the rest of the background work (times then count from the reopen)")
    p.add_argument("--max-segment-rows", type=int, default=None,
                   help="cap segments at this many rows (CompactionPolicy.max_rows; default: the default cap): "
                        "a table of several segments at a size that has one")
    p.add_argument("--role", choices=["omendb-build", "omendb-search", "faiss", "lancedb"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


ROLES = {"omendb-build": omendb_build_role, "omendb-search": omendb_search_role, "faiss": faiss_role,
         "lancedb": lancedb_role}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role:
        result = ROLES[args.role](args)
        Path(args.result).write_text(json.dumps(result, indent=1, default=str))
        return 0
    label = f"{args.rows // 1_000_000}m" if args.rows % 1_000_000 == 0 else f"{args.rows // 1000}k"
    args.out = args.out or RESULTS / f"scale-{label}"
    systems = set(args.systems.split(","))
    with Run(args, f"scale-{label}", lambda w: machine_info(w, lambda: {"faiss": _faiss_version()}),
             skip_args=("role", "result")) as run:
        workdir, res = run.workdir, run.res
        res["rows"] = args.rows
        if args.resume:
            res.update(_resumed_data(workdir, args.rows))
        else:
            print(f"making {args.rows:,} rows in {workdir}", flush=True)
            res["data"] = make_data(args.data, args.rows, workdir)
            truth, res["truth_s"] = exact_truth(workdir)
            np.save(workdir / "truth.npy", truth)
            _save_progress(workdir, data=res["data"], truth_s=res["truth_s"])
            print(f"exact top-10 in {res['truth_s']:.0f} s", flush=True)
        me = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(workdir), "--rows", str(args.rows)]
        if args.quick:
            me.append("--quick")
        if args.resume:
            me.append("--resume")
        if args.max_segment_rows:
            me += ["--max-segment-rows", str(args.max_segment_rows)]
            res["max_segment_rows"] = args.max_segment_rows

        def child(role: str, python: list[str] | None = None) -> dict:
            started = time.time()
            out = run_child((python or me[:1]) + me[1:] + ["--role", role, "--result", str(workdir / f"{role}.json")],
                            workdir / f"{role}.json", timeout=CHILD_TIMEOUT_S)
            out["wall_s"] = time.time() - started
            print(f"{role}: {out['wall_s']:.0f} s", flush=True)
            return out

        if "omendb" in systems:
            res["omendb_build"] = child("omendb-build")
            res["omendb_search"] = child("omendb-search")
            if not args.keep:
                shutil.rmtree(workdir / "omendb", ignore_errors=True)
        if "faiss" in systems:
            res["faiss"] = child("faiss")
        if "lancedb" in systems and args.peer_python:
            res["lancedb"] = child("lancedb", [args.peer_python])
            res["lancedb_versions"] = venv_versions(args.peer_python, ("lancedb", "pyarrow", "numpy"))
        elif "lancedb" in systems:
            res["lancedb"] = {"error": "not run: no --peer-python"}
        res["targets"] = targets(res)
        res["plot"] = f"{Path(args.out).name}.png"
        plot(res, Path(f"{args.out}.png"))
        run.finish(markdown)
    return 0


def _resumed_data(workdir: Path, rows: int) -> dict:
    """The data and truth an interrupted run left in ``workdir`` (checked, not remade)."""
    missing = [n for n in ("vectors.npy", "queries.npy", "truth.npy") if not (workdir / n).exists()]
    if missing:
        raise SystemExit(f"--resume: {workdir} has no {', '.join(missing)}; run without --resume")
    shape = np.load(workdir / "vectors.npy", mmap_mode="r").shape
    if shape != (rows, DIM):
        raise SystemExit(f"--resume: {workdir}/vectors.npy holds {shape}, not ({rows}, {DIM})")
    earlier = _progress(workdir)
    print(f"resuming in {workdir}: data and exact top-10 from the earlier run", flush=True)
    return {"data": earlier.get("data") or {"rows": rows, "dim": DIM, "vector_bytes": rows * DIM * 4,
                                            "seconds": None, "noise_norm": 0.05},
            "truth_s": earlier.get("truth_s"), "resumed": True}


def _faiss_version() -> str | None:
    try:
        import faiss

        return faiss.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
