#!/usr/bin/env python
"""HNSW benchmark: omendb's per-segment graph next to raw faiss and peer stores, in one run.

Measures, on the pypi-minilm-100k dataset (100,000 x 384 unit vectors, cosine), k=10:

1. omendb: cosine table, every row ingested into ONE segment (``memtable_bytes`` 1 GiB,
   then ``flush()``), ``HnswSq(m=16, ef_construction=200, min_rows=1000)`` (the default
   index type; ``--index flat``: ``HnswFlat``); index build time = from ``flush()``
   returning to ``wait_for_index()`` returning (graph, calibration, saving); then
   recall@10 (vs gt.parquet) and single-query p50/p99 of
   ``tbl.search(q, k=10, ef=ef, columns=['id'])`` over an ef sweep, and of
   ``tbl.search(q, k=10, recall=r)`` for recall targets (asked against measured).
2. raw faiss (the library omendb wraps) with the same parameters:
   ``IndexHNSWFlat(384, 16, METRIC_INNER_PRODUCT)`` on the normalised float32 vectors,
   efConstruction=200, same threads; build time, recall@10, p50/p99 per ef; and raw
   hnswlib (M=16, ef_construction=200, 2 threads, the fastest builder measured here):
   build time.
   Targets: omendb p50 <= 1.0x raw IndexHNSWFlat at recall 0.95 (each side's p50 where
   its own recall/p50 curve reaches 0.95, linear between the ef values around it: the
   graphs differ, so one ef gives each a different recall); build <= 1.2x raw hnswlib.
   The ratio at one ef is reported too, as omendb's overhead on a walk of the same length.
   An "index layer" column times omendb's ``HnswIndex.search`` alone (no table/planner/
   Arrow), which splits any overhead between the faiss wrapper and the query path.
3. peers, each in a subprocess run with ``--peer-python`` (a separate venv, see
   benchmarks/requirements-peers.txt), one at a time: LanceDB (IVF_HNSW_SQ with
   m/ef_construction as above and an ef sweep; IVF_PQ with an nprobes x refine_factor
   sweep) and Chroma (hnsw space cosine, same M / construction_ef, search_ef sweep):
   build time, recall@10, p50/p99, bytes on disk, RSS of a fresh process after open +
   first search. Skipped when ``--peer-python`` is not given.
4. the same graph file searched by omendb's index layer as omendb holds it (mapped) and
   after faiss' in-memory load, blocks of queries alternating.
5. omendb filtered search (``where="bucket < t"`` with ``bucket = id % 100``: ~1%, 10%,
   50% and 100% of rows): recall@10 vs. an exact NumPy top-10 over the allowed rows,
   p50/p99, rows violating the filter, queries answered with fewer than k rows; raw
   faiss with an ``IDSelectorBitmap`` at the same ef as a reference.
6. RSS of a FRESH process after opening the table and its first search, and the index
   bytes on disk (``stats()`` and the sizes of ``segments/*.hnsw``).

Results: benchmarks/results/hnsw.json and hnsw.md (``--quick``: hnsw-quick.*).

    python benchmarks/bench_hnsw.py --peer-python /work/benchvenv/bin/python   # full; run it alone
    python benchmarks/bench_hnsw.py --quick                                   # 20K rows, 200 queries

Only numpy, pyarrow and psutil are imported at module level: the same file runs the peer
parts under the peer venv's python (``--role peer-*``), where omendb and faiss are absent.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _harness import (THREAD_ENV, WARMUP, Run, Side, add_run_args, alternating_rounds, arrow_ids,
                      dataset_schema, dir_bytes, ef_sweep, exact_topk, f3, f4, fastest_at_recall, ground_truth,
                      load_dataset, machine_info, machine_section, measure, memory_mib, mib, now_ns, p50_at_recall,
                      package_version, pad_ids, parser, pct, run_child, run_defaults, time_each, title,
                      venv_versions)

TABLE = "pypi"
K = 10
M = 16
EF_CONSTRUCTION = 200
FULL_EFS = (16, 32, 48, 64, 96, 128, 200)
QUICK_EFS = (16, 32, 64, 128)
#: ef used by the filtered-search part (omendb's default ``HnswConfig.ef_search``).
FILTER_EF = 64
#: bucket = id % 100; ``bucket < t`` selects ~t% of the rows (None = no filter).
FILTER_THRESHOLDS = (1, 10, 50, None)
RECALL_TARGET = 0.95
#: omendb p50 / raw IndexHNSWFlat p50 at recall 0.95 (quantized graphs: at least as fast)
P50_TARGET = 1.0
#: omendb build / raw hnswlib build
BUILD_TARGET = 1.2
#: ``search(recall=...)`` targets checked against the measured recall
RECALL_TARGETS = (0.8, 0.9, 0.95, 0.97, 0.99)
THREADS = 2
#: LanceDB IVF_PQ sweep: (nprobes, refine_factor); refine_factor None = no re-ranking.
PQ_SWEEP_FULL = ((16, None), (8, 10), (16, 10), (32, 10), (64, 10), (16, 30), (32, 30), (64, 30))
PQ_SWEEP_QUICK = ((16, None), (8, 10), (32, 10), (32, 30))
#: LanceDB IVF_HNSW_SQ refine factors swept with every ef (SQ codes need re-ranking for high recall).
SQ_REFINE = (None, 2)
#: limit of each subprocess (peer run, RSS probe)
PROBE_TIMEOUT_S = 4 * 3600


# ============================================================================ helpers
def faiss_ids(results) -> np.ndarray:
    """Ids of ``index.search(q[None], k)`` results (faiss, omendb's index layer)."""
    return np.stack([r[1][0] for r in results])


# ============================================================================ peers (peer venv)
def peer_lancedb(args, X, Q, base, gt, workdir: Path) -> dict:
    import pyarrow as pa
    import lancedb
    from lancedb.index import HnswSq, IvfPq

    n, dim = X.shape
    out: dict = {"system": "lancedb", "version": lancedb.__version__,
                 "pylance": package_version("lance"), "configs": []}
    path = workdir / "lancedb"
    shutil.rmtree(path, ignore_errors=True)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), dim)
    table = pa.table({"id": base["id"], "name": base["name"], "summary": base["summary"], "vector": vec})
    db = lancedb.connect(str(path))
    t0 = now_ns()
    tbl = db.create_table(TABLE, data=table)
    out["ingest_s"] = (now_ns() - t0) / 1e9
    del table, vec
    efs = args.efs

    def search_sweep(index_label: str, configs):
        for cfg in configs:
            ef, nprobes, refine = cfg.get("ef"), cfg["nprobes"], cfg.get("refine_factor")

            def run(q, ef=ef, nprobes=nprobes, refine=refine):
                b = tbl.search(q, vector_column_name="vector").distance_type("cosine").limit(K).nprobes(nprobes)
                if ef is not None:
                    b = b.ef(ef)
                if refine is not None:
                    b = b.refine_factor(refine)
                return b.select(["id", "_distance"]).to_arrow()

            point, _ = measure(Side(run, Q, arrow_ids, short=True), gt)
            row = {"index": index_label, **cfg, **point}
            out["configs"].append(row)
            print(f"  lancedb {index_label} {cfg}: recall {row['recall']:.4f} p50 {row['p50_ms']:.3f} ms "
                  f"p99 {row['p99_ms']:.3f} ms", flush=True)

    # --- IVF_HNSW_SQ: one partition = one graph, like omendb's one segment
    t0 = now_ns()
    tbl.create_index("vector", config=HnswSq(distance_type="cosine", num_partitions=1, m=M,
                                             ef_construction=EF_CONSTRUCTION), name="vec_hnsw_sq")
    _lance_wait(tbl, "vec_hnsw_sq")
    out["ivf_hnsw_sq"] = {"build_s": (now_ns() - t0) / 1e9, "num_partitions": 1, "m": M,
                          "ef_construction": EF_CONSTRUCTION,
                          "index_bytes": dir_bytes(path / f"{TABLE}.lance" / "_indices")}
    out["ivf_hnsw_sq"]["table_bytes"] = dir_bytes(path)
    print(f"  lancedb IVF_HNSW_SQ built in {out['ivf_hnsw_sq']['build_s']:.2f} s", flush=True)
    # lance needs ef >= k * refine_factor
    search_sweep("IVF_HNSW_SQ", [{"ef": ef, "nprobes": 1, "refine_factor": rf} for rf in SQ_REFINE for ef in efs
                                 if ef >= K * (rf or 1)])
    out["rss_after_hnsw_sq_sweep"] = memory_mib(peak=True)

    # --- IVF_PQ (replaces the HNSW index on the column)
    partitions = max(8, int(round(math.sqrt(n))))
    sub_vectors = dim // 8 if dim % 8 == 0 else dim // 16 if dim % 16 == 0 else 1
    t0 = now_ns()
    tbl.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=partitions,
                                            num_sub_vectors=sub_vectors), name="vec_ivf_pq", replace=True)
    _lance_wait(tbl, "vec_ivf_pq")
    try:
        names = [i.name for i in tbl.list_indices()]
        if "vec_hnsw_sq" in names:
            tbl.drop_index("vec_hnsw_sq")
    except Exception as exc:  # informational
        print(f"  (lancedb: could not drop the HNSW_SQ index: {exc})", flush=True)
    out["ivf_pq"] = {"build_s": (now_ns() - t0) / 1e9, "num_partitions": partitions,
                     "num_sub_vectors": sub_vectors, "num_bits": 8}
    try:
        out["indices"] = [str(i) for i in tbl.list_indices()]
    except Exception:
        pass
    print(f"  lancedb IVF_PQ built in {out['ivf_pq']['build_s']:.2f} s", flush=True)
    sweep = PQ_SWEEP_QUICK if args.quick else PQ_SWEEP_FULL
    search_sweep("IVF_PQ", [{"nprobes": p, "refine_factor": r} for p, r in sweep])
    out["ivf_pq"]["table_bytes"] = dir_bytes(path)
    out["table_bytes_total"] = dir_bytes(path)
    return out


def _lance_wait(tbl, name: str) -> None:
    try:
        from datetime import timedelta

        tbl.wait_for_index([name], timeout=timedelta(seconds=3600))
    except Exception:
        pass  # local tables build synchronously; older/newer APIs may not have wait_for_index


def peer_chroma(args, X, Q, base, gt, workdir: Path) -> dict:
    import chromadb
    from chromadb.config import Settings

    n, dim = X.shape
    out: dict = {"system": "chroma", "version": chromadb.__version__, "configs": []}
    path = workdir / "chroma"
    shutil.rmtree(path, ignore_errors=True)
    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    hnsw = {"space": "cosine", "max_neighbors": M, "ef_construction": EF_CONSTRUCTION, "ef_search": 64,
            "num_threads": os.cpu_count() or 1}
    col = client.create_collection(TABLE, embedding_function=None, configuration={"hnsw": hnsw})
    batch = client.get_max_batch_size()
    ids = [str(int(i)) for i in base["id"].to_numpy()]
    t0 = now_ns()
    for s in range(0, n, batch):
        col.add(ids=ids[s:s + batch], embeddings=X[s:s + batch])
    out["build_s"] = (now_ns() - t0) / 1e9  # Chroma builds its HNSW graph while adding
    out["add_batch"] = batch
    out["hnsw"] = hnsw
    out["count"] = col.count()
    print(f"  chroma: {out['count']} rows added + indexed in {out['build_s']:.2f} s (batches of {batch})", flush=True)
    out["rss_after_build"] = memory_mib(peak=True)
    del col, client
    # Chroma applies a changed ef_search only when a process loads the collection: searching
    # in this process after modify() keeps the old ef (checked: recall does not move). So each
    # ef is searched by a fresh process (--role peer-chroma-ef) that sets it before its first query.
    for ef in args.efs:
        result = workdir / f"chroma-ef{ef}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "peer-chroma-ef", "--ef", str(ef),
               "--result", str(result), "--data", str(args.data), "--rows", str(args.rows),
               "--queries", str(args.queries), "--workdir", str(workdir)]
        proc = subprocess.run(cmd)
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(f"chroma search at ef={ef} failed (exit code {proc.returncode})")
        row = json.loads(result.read_text())
        out["configs"].append(row)
        print(f"  chroma ef={ef}: recall {row['recall']:.4f} p50 {row['p50_ms']:.3f} ms "
              f"p99 {row['p99_ms']:.3f} ms (collection ef_search {row['ef_search_config']})", flush=True)
    out["bytes_total"] = dir_bytes(path)
    out["index_bytes"] = sum(dir_bytes(p) for p in path.iterdir() if p.is_dir())  # per-segment HNSW folders
    return out


def peer_chroma_ef(args) -> dict:
    import chromadb
    from chromadb.config import Settings

    workdir = Path(args.workdir)
    Q = np.load(workdir / "queries.npy")
    gt = np.load(workdir / "gt10.npy")
    client = chromadb.PersistentClient(path=str(workdir / "chroma"), settings=Settings(anonymized_telemetry=False))
    col = client.get_collection(TABLE)
    col.modify(configuration={"hnsw": {"ef_search": args.ef}})

    def run(q):
        return col.query(query_embeddings=[q], n_results=K, include=["distances"])

    point, _ = measure(Side(run, Q, lambda res: pad_ids([[int(x) for x in r["ids"][0]] for r in res]), short=True),
                       gt)
    return {"index": "hnsw", "ef": args.ef, **point,
            "ef_search_config": (col.configuration_json or {}).get("hnsw", {}).get("ef_search")}


def peer_rss(system: str, workdir: Path, q: np.ndarray) -> dict:
    """Fresh process: RSS after imports, after open, after the first and second search."""
    import pyarrow  # noqa: F401  (imported by both peers anyway)

    if system == "lancedb":
        import lancedb
    else:
        import chromadb
        from chromadb.config import Settings
    gc.collect()
    stages = {"after_imports": memory_mib(peak=True)}
    t0 = now_ns()
    if system == "lancedb":
        tbl = lancedb.connect(str(workdir / "lancedb")).open_table(TABLE)
        search = lambda: tbl.search(q).distance_type("cosine").limit(K).nprobes(32).refine_factor(10) \
            .select(["id", "_distance"]).to_arrow()  # noqa: E731
    else:
        client = chromadb.PersistentClient(path=str(workdir / "chroma"), settings=Settings(anonymized_telemetry=False))
        col = client.get_collection(TABLE)
        search = lambda: col.query(query_embeddings=[q], n_results=K, include=["distances"])  # noqa: E731
    open_s = (now_ns() - t0) / 1e9
    stages["after_open"] = memory_mib(peak=True)
    t0 = now_ns()
    search()
    first_s = (now_ns() - t0) / 1e9
    stages["after_first_search"] = memory_mib(peak=True)
    t0 = now_ns()
    search()
    second_s = (now_ns() - t0) / 1e9
    stages["after_second_search"] = memory_mib(peak=True)
    return {"stages": stages, "open_s": open_s, "first_search_s": first_s, "second_search_s": second_s,
            "note": "lancedb: the IVF_PQ index (nprobes 32, refine 10) is the one left on the table"
            if system == "lancedb" else "chroma: hnsw"}


def run_peer_role(args) -> None:
    workdir = Path(args.workdir)
    out_path = Path(args.result)
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.role == "peer-rss":
        Q = np.load(workdir / "queries.npy")
        result = peer_rss(args.system, workdir, Q[0])
    elif args.role == "peer-chroma-ef":
        result = peer_chroma_ef(args)
    else:
        base, X, Q, _, _ = load_dataset(Path(args.data), args.rows, args.queries)
        gt = np.load(workdir / "gt10.npy")
        fn = peer_lancedb if args.system == "lancedb" else peer_chroma
        t0 = time.time()
        result = fn(args, X, Q, base, gt, workdir)
        result["wall_s"] = time.time() - t0
    out_path.write_text(json.dumps(result, indent=1, default=str))


# ============================================================================ omendb + faiss (main venv)
def bench_omendb_build(base, dim: int, workdir: Path, index_kind: str, batch: int = 10_000):
    import pyarrow as pa
    import pyarrow.compute as pc
    import omendb

    path = workdir / "omendb"
    shutil.rmtree(path, ignore_errors=True)
    db = omendb.open(path, fsync=False, memtable_bytes=1 << 30)
    kind = omendb.HnswFlat if index_kind == "flat" else omendb.HnswSq
    config = kind(m=M, ef_construction=EF_CONSTRUCTION, min_rows=1000)
    tbl = db.create_table(TABLE, schema=dataset_schema(dim, pa.field("bucket", pa.int64())), metric="cosine",
                          index=config)
    data = base.select(["id", "name", "summary"]).append_column(
        "bucket", pc.remainder(base["id"], pa.scalar(100, pa.int64()))).append_column("vector", base["vector"])
    t0 = now_ns()
    for s in range(0, data.num_rows, batch):
        tbl.add(data.slice(s, batch))  # float16 vectors: omendb casts them to float32
    ingest_s = (now_ns() - t0) / 1e9
    t0 = now_ns()
    tbl.flush()
    t1 = now_ns()
    ok = tbl.wait_for_index()
    t2 = now_ns()
    stats = tbl.stats()
    res = {"ingest_s": ingest_s, "ingest_rows_per_s": data.num_rows / ingest_s, "flush_s": (t1 - t0) / 1e9,
           "build_s": (t2 - t1) / 1e9, "flush_plus_build_s": (t2 - t0) / 1e9, "wait_ok": bool(ok),
           "stats": stats, "config": config.to_dict(), "memtable_bytes": 1 << 30, "add_batch": batch}
    if stats["segments"] != 1 or stats["indexed_segments"] != 1:
        res["warning"] = f"expected 1 indexed segment, got {stats['segments']} segment(s), " \
                         f"{stats['indexed_segments']} indexed"
    return db, tbl, res


class LayerSearch:
    """omendb's ``HnswIndex.search`` over one segment, given the segment's vectors and norms
    (which a quantized graph re-scores its candidates from)."""

    def __init__(self, index, handle) -> None:
        self.index, self.vectors, self.norms = index, handle.vectors, handle.norms

    def search(self, q2: np.ndarray, k: int, ef: int):
        return self.index.search(q2, k, ef, vectors=self.vectors, norms=self.norms)


def index_layer(tbl):
    """omendb's HnswIndex of the table's single segment (internal API; None if it moved)."""
    try:
        handles = [h for h in tbl.core.state.segments if h.entry.index_file is not None]
        return LayerSearch(handles[0].hnsw(), handles[0]) if len(handles) == 1 else None
    except Exception:
        return None


def bench_index_memory(tbl, Q: np.ndarray, ef: int = 64, block: int = 100, rounds: int = 10) -> dict | None:
    """The same index file searched (omendb's ``HnswIndex.search``) as omendb holds it (a faiss
    file mapping, ``IO_FLAG_MMAP_IFC``) and as faiss' own in-memory load. Blocks of queries
    alternate between the two, so drift of the machine's speed falls on both alike."""
    import faiss
    from omendb.index.hnsw import HnswIndex

    handles = tbl.core.state.segments
    if len(handles) != 1 or handles[0].entry.index_file is None:
        return None
    path = handles[0].directory / handles[0].entry.index_file
    loads = {"omendb (file mapping)": LayerSearch(handles[0].hnsw(), handles[0]),
             "faiss in-memory load": LayerSearch(HnswIndex(faiss.read_index(str(path)), "cosine"), handles[0])}
    Q2 = Q[:, None, :]

    def block_of(index):  # round i: the i-th block of queries (cycling)
        return lambda i: time_each(lambda q2: index.search(q2, K, ef), Q2[(i * block) % len(Q2):][:block],
                                   warmup=5)[1]

    names = list(loads)
    runs = alternating_rounds({name: block_of(index) for name, index in loads.items()}, rounds * len(names),
                              reverse_odd=True, collect=False)
    lat = {name: np.concatenate([r[name] for r in runs]) for name in names}
    out = {"ef": ef, "queries_each": len(lat[names[0]]),
           "p50_ms": {name: pct(v, 50) for name, v in lat.items()}}
    print("  " + ", ".join(f"{n}: p50 {v:.3f} ms" for n, v in out["p50_ms"].items()), flush=True)
    return out


def faiss_build(X: np.ndarray):
    import faiss

    t0 = now_ns()
    Xn = np.ascontiguousarray(X / np.maximum(np.linalg.norm(X, axis=1), 1e-30)[:, None], dtype=np.float32)
    t1 = now_ns()
    index = faiss.IndexHNSWFlat(X.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(Xn)
    t2 = now_ns()
    return index, {"build_s": (t2 - t1) / 1e9, "normalise_s": (t1 - t0) / 1e9,
                   "omp_threads": faiss.omp_get_max_threads(),
                   "index_bytes": int(faiss.serialize_index(index).size)}


def hnswlib_build(X: np.ndarray) -> dict:
    """Raw hnswlib (the fastest HNSW builder measured here) over the same rows: build seconds only."""
    try:
        import hnswlib
    except ImportError:
        return {"error": "hnswlib is not installed (pip install -e '.[bench]')"}
    Xn = np.ascontiguousarray(X / np.maximum(np.linalg.norm(X, axis=1), 1e-30)[:, None], dtype=np.float32)
    index = hnswlib.Index(space="ip", dim=X.shape[1])
    index.init_index(max_elements=len(Xn), ef_construction=EF_CONSTRUCTION, M=M)
    index.set_num_threads(THREADS)
    t0 = now_ns()
    index.add_items(Xn, np.arange(len(Xn)))
    build_s = (now_ns() - t0) / 1e9
    index.set_ef(64)
    _, labels = index.knn_query(Xn[:200], k=K)
    return {"build_s": build_s, "threads": THREADS, "version": package_version("hnswlib"),
            "self_recall_ef64": float(np.mean(labels[:, 0] == np.arange(200)))}


def recall_targets(tbl, Q: np.ndarray, gt: np.ndarray) -> list[dict]:
    """``tbl.search(q, k=10, recall=r)``: the recall asked for against the recall measured."""
    out = []
    for target in RECALL_TARGETS:
        point, _ = measure(Side(lambda q, t=target: tbl.search(q, k=K, recall=t, columns=["id"]), Q, arrow_ids,
                                short=True), gt)
        out.append({"target": target, **point})
        print(f"  recall={target}: measured {point['recall']:.4f}, p50 {point['p50_ms']:.3f} ms", flush=True)
    return out


def sweep(tbl, findex, layer, Q: np.ndarray, gt: np.ndarray, efs) -> list[dict]:
    """Per ef: omendb table.search, omendb index layer, raw faiss — one after the other."""
    Q2 = Q[:, None, :]

    def faiss_side(ef):
        findex.hnsw.efSearch = ef
        return Side(lambda q2: findex.search(q2, K), Q2, faiss_ids)

    def row(ef, p: dict, ids: dict) -> dict:
        om, lay, fa = p["omendb"], p["index_layer"], p["faiss"]
        r = {"ef": ef, **p, "p50_ratio": om["p50_ms"] / fa["p50_ms"], "p99_ratio": om["p99_ms"] / fa["p99_ms"],
             "same_results_as_faiss": float(np.mean([len(set(a) & set(b)) / K
                                                     for a, b in zip(ids["omendb"], ids["faiss"])]))}
        print(f"  ef={ef:4d}  omendb recall {om['recall']:.4f} p50 {om['p50_ms']:.3f} p99 {om['p99_ms']:.3f} | "
              + (f"layer p50 {lay['p50_ms']:.3f} | " if lay else "")
              + f"faiss recall {fa['recall']:.4f} p50 {fa['p50_ms']:.3f} p99 {fa['p99_ms']:.3f} | "
              f"ratio p50 {r['p50_ratio']:.2f}x", flush=True)
        return r

    return ef_sweep(efs, {
        "omendb": lambda ef: Side(lambda q: tbl.search(q, k=K, ef=ef, columns=["id"]), Q, arrow_ids, short=True),
        "index_layer": lambda ef: None if layer is None else Side(lambda q2: layer.search(q2, K, ef), Q2, faiss_ids),
        "faiss": faiss_side}, gt, row=row)


def bench_filtered(tbl, findex, X: np.ndarray, Q: np.ndarray, ids: np.ndarray, ef: int) -> list[dict]:
    import faiss

    bucket = ids % 100
    out = []
    for t in FILTER_THRESHOLDS:
        where = None if t is None else f"bucket < {t}"
        allowed = None if t is None else bucket < t
        truth = ids[exact_topk(X, Q, K, allowed)]
        n_allowed = int(X.shape[0] if allowed is None else allowed.sum())
        want = min(K, n_allowed)

        def checks(res, t=t, want=want) -> dict:
            return {"violating_rows": sum(int((r["bucket"].to_numpy() >= t).sum()) for r in res) if t is not None
                    else 0, "short_queries": sum(1 for r in res if r.num_rows < want)}

        omendb_point, _ = measure(Side(lambda q: tbl.search(q, k=K, ef=ef, where=where, columns=["id", "bucket"]), Q,
                                       arrow_ids, extra=checks), truth)
        row = {"where": where, "allowed_rows": n_allowed, "allowed_fraction": n_allowed / X.shape[0],
               "omendb": omendb_point}
        # raw faiss reference: the same graph walk restricted by a bitmap selector
        findex.hnsw.efSearch = ef
        if allowed is None:
            params = faiss.SearchParametersHNSW(efSearch=ef)
        else:
            bits = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(allowed.size, faiss.swig_ptr(bits))
            params = faiss.SearchParametersHNSW(efSearch=ef, sel=sel)
        row["faiss_selector"], _ = measure(Side(lambda q2: findex.search(q2, K, params=params), Q[:, None, :],
                                                faiss_ids, short=True), truth)
        if allowed is not None:
            del sel, bits
        out.append(row)
        o, f = row["omendb"], row["faiss_selector"]
        print(f"  where={where!s:12s} allowed {n_allowed:6d}: omendb recall {o['recall']:.4f} "
              f"p50 {o['p50_ms']:.3f} ms violations {o['violating_rows']} short {o['short_queries']} | faiss+selector "
              f"recall {f['recall']:.4f} p50 {f['p50_ms']:.3f} ms", flush=True)
    return out


def rss_probe_role(args) -> None:
    """Fresh process (main venv): RSS after imports / open / first search / second search."""
    workdir = Path(args.workdir)
    q = np.load(workdir / "queries.npy")[0]
    import omendb

    gc.collect()
    stages = {"after_imports": memory_mib(peak=True)}
    t0 = now_ns()
    db = omendb.open(workdir / "omendb")
    tbl = db.open_table(TABLE)
    open_s = (now_ns() - t0) / 1e9
    stages["after_open"] = memory_mib(peak=True)
    modules = set(sys.modules)
    t0 = now_ns()
    tbl.search(q, k=K, columns=["id"])
    first_s = (now_ns() - t0) / 1e9
    stages["after_first_search"] = memory_mib(peak=True)
    imported = sorted({m.split(".")[0] for m in set(sys.modules) - modules})
    t0 = now_ns()
    tbl.search(q, k=K, columns=["id"])
    second_s = (now_ns() - t0) / 1e9
    stages["after_second_search"] = memory_mib(peak=True)
    stats = tbl.stats()
    db.close()
    Path(args.result).write_text(json.dumps({"stages": stages, "open_s": open_s, "first_search_s": first_s,
                                             "second_search_s": second_s, "stats": stats,
                                             "imported_by_first_search": imported}, indent=1))


def machine(workdir: Path) -> dict:
    import faiss
    import psutil

    return machine_info(workdir, lambda: {"faiss": faiss.__version__, "faiss_omp_threads": faiss.omp_get_max_threads(),
                                          "duckdb": package_version("duckdb"), "psutil": psutil.__version__},
                        env=THREAD_ENV + ("LANCE_CPU_THREADS", "RAYON_NUM_THREADS"))


# ============================================================================ report
def markdown(res: dict) -> str:
    a = res["args"]
    L = title("omendb HNSW benchmark", a["quick"], res["command"]) + [
         f"{a['rows']:,} rows x {res['dim']} dims (pypi-minilm-100k, float16 on disk -> float32), cosine, "
         f"k={K}; {a['queries']:,} single queries (each timed alone, {WARMUP} warm-up calls per config); "
         f"ground truth: {res['ground_truth']}. HNSW m={M}, ef_construction={EF_CONSTRUCTION}.", ""]
    s = res["summary"]
    L += ["## Targets", "",
          "| check | omendb | raw faiss | ratio | target | met |", "| --- | ---: | ---: | ---: | ---: | :---: |"]
    b = res["omendb"]["build"]
    hl = res.get("hnswlib") or {}
    if "build_s" in hl:
        L.append(f"| index build vs raw hnswlib ({hl['threads']} threads), s (flush -> wait_for_index) | "
                 f"{b['build_s']:.2f} | hnswlib {hl['build_s']:.2f} | {s['build_ratio_hnswlib']:.2f}x | "
                 f"<= {BUILD_TARGET}x | {'yes' if s['build_ok'] else '**no**'} |")
    else:
        L.append(f"| index build vs raw hnswlib | {b['build_s']:.2f} | {hl.get('error', 'not run')} | | "
                 f"<= {BUILD_TARGET}x | **no** |")
    L.append(f"| index build vs raw faiss IndexHNSWFlat, s | {b['build_s']:.2f} | {res['faiss']['build_s']:.2f} | "
             f"{s['build_ratio']:.2f}x | (info) | |")
    at = s.get("at_recall")
    if at is not None:
        L.append(f"| p50 at recall@10 = {RECALL_TARGET} (each side's own ef sweep, linear between the two ef values "
                 f"around it), ms | {at['omendb_ms']:.3f} | {at['faiss_ms']:.3f} | {at['ratio']:.2f}x | "
                 f"<= {P50_TARGET}x | {'yes' if at['ok'] else '**no**'} |")
    else:
        L.append(f"| p50 at recall@10 = {RECALL_TARGET} | not reached by both sweeps | | | <= {P50_TARGET}x | **no** |")
    if s.get("target_ef") is not None:
        r = next(x for x in res["sweep"] if x["ef"] == s["target_ef"])
        L.append(f"| p50 at one ef, the smallest where omendb recall >= {RECALL_TARGET} (ef={s['target_ef']}; "
                 f"recall {r['omendb']['recall']:.4f} vs faiss {r['faiss']['recall']:.4f}): omendb's overhead on the "
                 f"walk, ms | {r['omendb']['p50_ms']:.3f} | {r['faiss']['p50_ms']:.3f} | {r['p50_ratio']:.2f}x | "
                 f"(info) | |")
    L += ["", f"omendb build detail: ingest {b['ingest_s']:.2f} s ({b['ingest_rows_per_s']:,.0f} rows/s, "
          f"fsync=False, batches of {b['add_batch']:,}), flush {b['flush_s']:.2f} s, build {b['build_s']:.2f} s "
          f"(includes normalising, saving + fsync + crc of the index file, manifest publish); "
          f"segments {b['stats']['segments']}, indexed {b['stats']['indexed_segments']}. "
          f"Raw faiss: normalising {res['faiss']['normalise_s']:.2f} s (not counted), one `add` of all rows, "
          f"{res['faiss']['omp_threads']} OpenMP threads."
          + (f" **{b['warning']}**" if b.get("warning") else ""), ""]
    if res.get("recall_targets"):
        L += ["## Recall asked for, recall measured (`tbl.search(q, k=10, recall=r)`)", "",
              "| recall asked | recall@10 measured | p50 ms | p99 ms |", "| ---: | ---: | ---: | ---: |"]
        L += [f"| {r['target']} | {f4(r['recall'])} | {f3(r['p50_ms'])} | {f3(r['p99_ms'])} |"
              for r in res["recall_targets"]]
        L.append("")
    L += ["## ef sweep: omendb vs raw faiss (single query, k=10)", "",
          "| ef | omendb recall | omendb p50 ms | omendb p99 ms | index layer p50 ms | faiss recall | faiss p50 ms "
          "| faiss p99 ms | p50 ratio | p99 ratio | p50 overhead µs | same ids |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["sweep"]:
        o, f, lay = r["omendb"], r["faiss"], r["index_layer"]
        L.append(f"| {r['ef']} | {f4(o['recall'])} | {f3(o['p50_ms'])} | {f3(o['p99_ms'])} | "
                 f"{f3(lay['p50_ms']) if lay else '—'} | {f4(f['recall'])} | {f3(f['p50_ms'])} | {f3(f['p99_ms'])} | "
                 f"{r['p50_ratio']:.2f}x | {r['p99_ratio']:.2f}x | {1e3 * (o['p50_ms'] - f['p50_ms']):.0f} | "
                 f"{r['same_results_as_faiss']:.3f} |")
    L += ["", "omendb = `tbl.search(q, k=10, ef=ef, columns=['id'])`; index layer = omendb's `HnswIndex.search` "
          "alone (`SearchParametersHNSW`, distance conversion; no table, planner or Arrow); "
          "faiss = `index.search(q[None], 10)` with `hnsw.efSearch = ef`. p50 overhead = omendb p50 - faiss p50. same ids = mean overlap of omendb's "
          "and faiss' top-10 (the graphs differ: omendb adds rows in chunks of 8,192).", ""]
    if res["omendb"].get("short_queries_total"):
        L += [f"**omendb returned fewer than k rows for {res['omendb']['short_queries_total']} query calls.**", ""]
    mem = res.get("index_memory")
    if mem:
        base = mem["p50_ms"]["faiss in-memory load"]
        L += [f"## One graph, mapped or loaded (index layer, ef={mem['ef']})", "",
              "omendb's index file searched by `HnswIndex.search` as omendb holds it (a faiss file mapping, "
              "`IO_FLAG_MMAP_IFC`: page cache, shared, nothing loaded) and as faiss' own in-memory load; blocks "
              f"of 100 queries alternate between them ({mem['queries_each']:,} queries each).", "",
              "| held as | p50 ms | vs faiss in-memory |", "| --- | ---: | ---: |"]
        L += [f"| {name} | {p50:.3f} | {p50 / base:.2f}x |" for name, p50 in mem["p50_ms"].items()]
        L.append("")
    L += ["## Filtered search (omendb, ef=%d)" % res["filter_ef"], "",
          "`where='bucket < t'` with `bucket = id % 100`; truth = exact NumPy top-10 over the allowed rows.", "",
          "| where | allowed rows | omendb recall | p50 ms | p99 ms | violating rows | short queries "
          "| faiss+IDSelectorBitmap recall | faiss p50 ms |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["filtered"]:
        o, f = r["omendb"], r["faiss_selector"]
        L.append(f"| `{r['where']}` | {r['allowed_rows']:,} ({100 * r['allowed_fraction']:.0f}%) | {f4(o['recall'])} | "
                 f"{f3(o['p50_ms'])} | {f3(o['p99_ms'])} | {o['violating_rows']} | {o['short_queries']} | "
                 f"{f4(f['recall'])} | {f3(f['p50_ms'])} |")
    L += ["", "omendb's planner scans exactly when <= 4,096 rows (or < 3%) of a segment are allowed, else walks "
          "the graph with an allowed-row bitmap (and redoes a short answer exactly).", ""]
    # memory / disk
    rss = res.get("rss_probe", {})
    disk = res["disk"]
    L += ["## Memory and disk", "",
          f"omendb table on disk: {mib(disk['table_bytes'])} MiB (`stats()['bytes']` {mib(disk['stats_bytes'])} MiB): "
          f"segments/*.arrow {mib(disk['segment_bytes'])} MiB, segments/*.hnsw {mib(disk['hnsw_bytes'])} MiB "
          f"(the float32 vectors themselves: {mib(disk['vector_bytes'])} MiB; a flat graph holds a second copy, "
          f"a quantized one 8-bit codes). "
          f"Raw faiss serialised index: {mib(res['faiss']['index_bytes'])} MiB.", ""]
    if "stages" in rss:
        L += ["Fresh process opening the omendb table (MiB):", "",
              "| stage | RSS | RssAnon | RssFile |", "| --- | ---: | ---: | ---: |"]
        for k, v in rss["stages"].items():
            L.append(f"| {k.replace('_', ' ')} | {v['rss_mib']:.1f} | {v['rss_anon_mib']:.1f} | {v['rss_file_mib']:.1f} |")
        L += ["", f"open {rss['open_s'] * 1e3:.1f} ms; first search {rss['first_search_s'] * 1e3:.1f} ms "
              f"(maps the segment, verifies and loads the index); second search {rss['second_search_s'] * 1e3:.2f} ms. "
              f"Top-level modules first imported during the first search: "
              f"{', '.join(rss.get('imported_by_first_search') or []) or 'none'}.", ""]
    elif rss:
        L += [f"RSS probe failed: {rss}", ""]
    # peers
    peers = res.get("peers")
    L += ["## Peers", ""]
    if not peers:
        L += ["Skipped (no `--peer-python`).", ""]
    else:
        L += ["Each peer ran alone in a subprocess of the peer venv "
              f"({', '.join(f'{k} {v}' for k, v in res.get('peer_versions', {}).items() if v)}).", "",
              "| system | index | params | build s | recall@10 | p50 ms | p99 ms |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        best_rows = [("omendb", "HNSW (faiss)", fastest_at_recall(
            [{"recall": r["omendb"]["recall"], "p50_ms": r["omendb"]["p50_ms"], "p99_ms": r["omendb"]["p99_ms"],
              "ef": r["ef"]} for r in res["sweep"]], RECALL_TARGET), b["build_s"]),
                     ("faiss", "IndexHNSWFlat", fastest_at_recall(
            [{"recall": r["faiss"]["recall"], "p50_ms": r["faiss"]["p50_ms"], "p99_ms": r["faiss"]["p99_ms"],
              "ef": r["ef"]} for r in res["sweep"]], RECALL_TARGET), res["faiss"]["build_s"])]
        for name, p in peers.items():
            if "error" in p:
                L.append(f"| {name} | failed: {p['error']} | | | | | |")
                continue
            for r in p["configs"]:
                params = ", ".join(f"{k}={r[k]}" for k in ("ef", "nprobes", "refine_factor") if k in r)
                if name == "lancedb":
                    build = p["ivf_hnsw_sq"]["build_s"] if r["index"] == "IVF_HNSW_SQ" else p["ivf_pq"]["build_s"]
                else:
                    build = p["build_s"]
                L.append(f"| {name} | {r['index']} | {params} | {build:.2f} | {f4(r['recall'])} | "
                         f"{f3(r['p50_ms'])} | {f3(r['p99_ms'])} |")
            if name == "lancedb":
                for idx in ("IVF_HNSW_SQ", "IVF_PQ"):
                    bs = p["ivf_hnsw_sq"]["build_s"] if idx == "IVF_HNSW_SQ" else p["ivf_pq"]["build_s"]
                    best_rows.append((name, idx, fastest_at_recall([r for r in p["configs"] if r["index"] == idx],
                                                                RECALL_TARGET), bs))
            else:
                best_rows.append((name, "hnsw", fastest_at_recall(p["configs"], RECALL_TARGET), p["build_s"]))
        L += ["", f"Fastest configuration reaching recall@10 >= {RECALL_TARGET}:", "",
              "| system | index | params | build s | recall@10 | p50 ms | p99 ms |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for name, idx, r, bs in best_rows:
            if r is None:
                L.append(f"| {name} | {idx} | not reached | {bs:.2f} | | | |")
            else:
                params = ", ".join(f"{k}={r[k]}" for k in ("ef", "nprobes", "refine_factor") if k in r)
                L.append(f"| {name} | {idx} | {params} | {bs:.2f} | {f4(r['recall'])} | {f3(r['p50_ms'])} | "
                         f"{f3(r['p99_ms'])} |")
        L += ["", "Build: omendb = flush -> wait_for_index; faiss = one `add`; LanceDB = `create_index` "
              "(after `create_table`); Chroma = all `add` calls (it indexes while adding, so this includes ingest).", "",
              "| system | ingest s | on disk MiB | index MiB | fresh-process RSS after first search MiB (anon / file) |",
              "| --- | ---: | ---: | ---: | ---: |"]
        st = rss.get("stages", {}).get("after_first_search")
        L.append(f"| omendb | {b['ingest_s']:.2f} | {mib(disk['table_bytes'])} | {mib(disk['hnsw_bytes'])} | "
                 + (f"{st['rss_mib']:.1f} ({st['rss_anon_mib']:.1f} / {st['rss_file_mib']:.1f})" if st else "—") + " |")
        for name, p in peers.items():
            if "error" in p:
                continue
            pr = p.get("rss_probe", {}).get("stages", {}).get("after_first_search")
            rss_txt = f"{pr['rss_mib']:.1f} ({pr['rss_anon_mib']:.1f} / {pr['rss_file_mib']:.1f})" if pr else "—"
            if name == "lancedb":
                L.append(f"| lancedb | {p['ingest_s']:.2f} | {mib(p['table_bytes_total'])} (with IVF_PQ) | "
                         f"HNSW_SQ {mib(p['ivf_hnsw_sq']['index_bytes'])} | {rss_txt} (IVF_PQ table) |")
            else:
                L.append(f"| chroma | (in build) | {mib(p['bytes_total'])} | {mib(p['index_bytes'])} | {rss_txt} |")
        L.append("")
    m = res["machine"]
    libraries = (f"Python {m['python']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}, faiss {m['faiss']} "
                 f"({m['faiss_omp_threads']} OpenMP threads), duckdb {m['duckdb']}, psutil {m['psutil']}")
    peers_line = [f"- peers: {res['peer_python']}: {json.dumps(res.get('peer_versions', {}))}"] \
        if res.get("peer_python") else []
    L += machine_section(m, res["wall_s"], libraries, peers_line) + [""]
    return "\n".join(L)


# ============================================================================ main
def parse_args(argv=None):
    p = parser(__doc__)
    add_run_args(p, "hnsw", quick="20K rows, 200 queries, 4 ef values: a sanity check",
                 queries="queries to time (default 1,000; --quick 200)")
    p.add_argument("--efs", type=lambda s: [int(x) for x in s.split(",")],
                   help=f"ef values, comma-separated (default {','.join(map(str, FULL_EFS))}; "
                        f"--quick {','.join(map(str, QUICK_EFS))})")
    p.add_argument("--peer-python", help="python of a venv with lancedb + chromadb "
                   "(benchmarks/requirements-peers.txt); peers are skipped without it")
    p.add_argument("--peers", default="lancedb,chroma", help="peers to run (default: %(default)s)")
    p.add_argument("--index", choices=["sq", "flat"], default="sq",
                   help="omendb's index type: HnswSq (the default) or HnswFlat (default: %(default)s)")
    # internal: subprocess roles
    p.add_argument("--role", choices=["main", "rss-probe", "peer", "peer-rss", "peer-chroma-ef"], default="main",
                   help=argparse.SUPPRESS)
    p.add_argument("--ef", type=int, help=argparse.SUPPRESS)
    p.add_argument("--system", choices=["lancedb", "chroma"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    run_defaults(args)
    if args.efs is None:
        args.efs = list(QUICK_EFS if args.quick else FULL_EFS)
    if any(ef < K for ef in args.efs):
        p.error(f"every ef must be >= k={K}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role == "rss-probe":
        rss_probe_role(args)
        return 0
    if args.role in ("peer", "peer-rss", "peer-chroma-ef"):
        run_peer_role(args)
        return 0

    import faiss  # noqa: F401  (fail early, before any work, if the main venv lacks it)

    with Run(args, "hnsw", machine, skip_args=("role", "system", "result", "ef")) as run:
        res, workdir = run.res, run.workdir
        print(f"loading {args.rows:,} rows, {args.queries:,} queries from {args.data}", flush=True)
        base, X, Q, dim, _ = load_dataset(args.data, args.rows, args.queries)
        ids = base["id"].to_numpy()
        res["dim"] = dim
        if not np.array_equal(ids, np.arange(args.rows)):
            raise SystemExit("base.parquet ids are expected to be 0..N-1 in file order")
        gt, res["ground_truth"] = ground_truth(args.data, X, Q, K, args.rows)
        np.save(workdir / "gt10.npy", gt)
        np.save(workdir / "queries.npy", Q)

        # ---- 1. omendb: ingest, flush, build
        print("omendb: ingest + flush + index build", flush=True)
        db, tbl, build = bench_omendb_build(base, dim, workdir, args.index)
        print(f"  ingest {build['ingest_s']:.2f} s, flush {build['flush_s']:.2f} s, build {build['build_s']:.2f} s "
              f"({build['stats']['segments']} segment(s), {build['stats']['indexed_segments']} indexed)", flush=True)
        res["omendb"] = {"build": build}
        del base
        gc.collect()

        # ---- 2. raw faiss build (omendb's builder thread is idle by now)
        print("raw faiss: build", flush=True)
        findex, fres = faiss_build(X)
        res["faiss"] = fres
        res["build_ratio"] = build["build_s"] / fres["build_s"]
        print(f"  build {fres['build_s']:.2f} s -> omendb/faiss build ratio {res['build_ratio']:.2f}x", flush=True)

        print("raw hnswlib: build", flush=True)
        res["hnswlib"] = hnswlib_build(X)
        if "build_s" in res["hnswlib"]:
            res["build_ratio_hnswlib"] = build["build_s"] / res["hnswlib"]["build_s"]
            print(f"  build {res['hnswlib']['build_s']:.2f} s -> omendb/hnswlib {res['build_ratio_hnswlib']:.2f}x",
                  flush=True)
        gc.collect()

        print("recall targets (search(recall=...))", flush=True)
        res["recall_targets"] = recall_targets(tbl, Q, gt)

        # ---- ef sweep, each ef: omendb, index layer, faiss (one after the other)
        print("ef sweep (single queries)", flush=True)
        layer = index_layer(tbl)
        res["sweep"] = sweep(tbl, findex, layer, Q, gt, args.efs)
        res["omendb"]["short_queries_total"] = sum(r["omendb"]["short_queries"] for r in res["sweep"])

        # ---- 3. one graph file, mapped vs loaded
        print("index memory: omendb's graph file mapped vs loaded", flush=True)
        res["index_memory"] = bench_index_memory(tbl, Q)

        # ---- 4. filtered
        print(f"filtered search (ef={FILTER_EF})", flush=True)
        res["filter_ef"] = FILTER_EF
        res["filtered"] = bench_filtered(tbl, findex, X, Q, ids, FILTER_EF)

        # ---- 5. disk
        stats = tbl.stats()
        seg = workdir / "omendb" / TABLE / "segments"
        res["disk"] = {"stats_bytes": stats["bytes"], "table_bytes": dir_bytes(workdir / "omendb" / TABLE),
                       "segment_bytes": dir_bytes(seg, "*.arrow"), "hnsw_bytes": dir_bytes(seg, "*.hnsw"),
                       "hnsw_files": sorted(p.name for p in seg.glob("*.hnsw")),
                       "vector_bytes": int(X.shape[0]) * dim * 4, "stats": stats}
        db.close()
        del tbl, db, findex, layer
        gc.collect()

        # ---- 5. RSS of a fresh process
        print("omendb: RSS of a fresh process (open + first search)", flush=True)
        res["rss_probe"] = run_child([sys.executable, str(Path(__file__).resolve()), "--role", "rss-probe",
                                      "--workdir", str(workdir), "--result", str(workdir / "rss.json")],
                                     workdir / "rss.json", timeout=PROBE_TIMEOUT_S)

        # ---- 3. peers, one at a time
        if args.peer_python:
            del X
            gc.collect()
            res["peer_python"] = args.peer_python
            res["peer_versions"] = venv_versions(args.peer_python, ("lancedb", "pylance", "chromadb", "pyarrow",
                                                                    "numpy", "pandas", "psutil"))
            res["peers"] = {}
            env = dict(os.environ, ANONYMIZED_TELEMETRY="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            common = ["--data", str(args.data), "--rows", str(args.rows), "--queries", str(args.queries),
                      "--efs", ",".join(map(str, args.efs)), "--workdir", str(workdir)] + (["--quick"] if args.quick else [])
            for system in [s.strip() for s in args.peers.split(",") if s.strip()]:
                print(f"peer: {system}", flush=True)
                result = workdir / f"peer-{system}.json"
                t0 = time.time()
                r = run_child([args.peer_python, str(Path(__file__).resolve()), "--role", "peer", "--system", system,
                               "--result", str(result), *common], result, env=env,
                              timeout=PROBE_TIMEOUT_S)
                if "error" not in r:
                    r["rss_probe"] = run_child(
                        [args.peer_python, str(Path(__file__).resolve()), "--role", "peer-rss", "--system", system,
                         "--result", str(workdir / f"peer-{system}-rss.json"), *common],
                        workdir / f"peer-{system}-rss.json", env=env, timeout=PROBE_TIMEOUT_S)
                print(f"  {system} done in {time.time() - t0:.0f} s", flush=True)
                res["peers"][system] = r
                shutil.rmtree(workdir / system, ignore_errors=True)
        else:
            print("peers skipped (no --peer-python)", flush=True)

        # ---- summary
        target = next((r for r in res["sweep"] if r["omendb"]["recall"] >= RECALL_TARGET), None)
        at_omendb = p50_at_recall([(r["omendb"]["recall"], r["omendb"]["p50_ms"]) for r in res["sweep"]], RECALL_TARGET)
        at_faiss = p50_at_recall([(r["faiss"]["recall"], r["faiss"]["p50_ms"]) for r in res["sweep"]], RECALL_TARGET)
        at_recall = None
        if at_omendb is not None and at_faiss is not None:
            at_recall = {"omendb_ms": at_omendb, "faiss_ms": at_faiss, "ratio": at_omendb / at_faiss,
                         "ok": at_omendb / at_faiss <= P50_TARGET}
        res["summary"] = {
            "at_recall": at_recall,
            "build_ratio": res["build_ratio"], "build_ratio_hnswlib": res.get("build_ratio_hnswlib"),
            "build_ok": res.get("build_ratio_hnswlib") is not None and res["build_ratio_hnswlib"] <= BUILD_TARGET,
            "target_ef": target["ef"] if target else None,
            "same_ef_p50_ratio": target["p50_ratio"] if target else None,
            "p50_ok": bool(at_recall and at_recall["ok"]),
            "filter_violations": sum(r["omendb"]["violating_rows"] for r in res["filtered"]),
            "filter_short_queries": sum(r["omendb"]["short_queries"] for r in res["filtered"]),
        }
        run.finish(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
