#!/usr/bin/env python
"""Index-type study: which faiss index should omendb's segments get by default?

On the pypi-minilm-100k dataset (100,000 x 384 unit vectors, cosine, k=10), each
candidate index is built over the same rows with the same threads (2) and searched one
query at a time; like omendb, the final top-10 is re-scored exactly from the float32
vectors (the best ``4 * k`` candidates, or ``ef`` if fewer), so each index is judged
on the candidates it finds, not on its approximate distances. Reported per index:
build seconds, bytes per row of the index file (vectors kept elsewhere: for flat HNSW
the file holds a second float32 copy), and recall@10 with p50 latency per search
setting, plus the p50 where each reaches recall 0.95.

Candidates: HNSW over float32 (``IndexHNSWFlat``), over 8-, 6- and 4-bit scalar codes
(``IndexHNSWSQ``), over RaBitQ codes (``IndexHNSWRaBitQ``, 1 and 4 bits; L2 only, equal
to cosine on unit vectors), and IVF over 8-bit codes and over PQ codes (faster builds,
no graph). M=16, efConstruction=200 for every graph; IVF with 4 * sqrt(N) lists.

Results: benchmarks/results/index_types.json and index_types.md.

    python benchmarks/bench_index_types.py                  # every kind but rabitq4 (~8 minutes)
    python benchmarks/bench_index_types.py --kinds hnsw_flat,hnsw_sq8 --quick
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (Run, f3, f4, ground_truth, load_dataset, machine_info, machine_section,  # noqa: E402
                      md_table, p50_at_recall, parser, recall_at_k, time_each)

K = 10
M = 16
EF_CONSTRUCTION = 200
THREADS = 2
EFS = (16, 32, 48, 64, 96, 128, 200)
NPROBES = (8, 16, 32, 64, 128)
KINDS = ("hnsw_flat", "hnsw_sq8", "hnsw_sq6", "hnsw_sq4", "hnsw_rabitq1", "hnsw_rabitq4", "ivf_sq8", "ivf_pq48")
DEFAULT_KINDS = tuple(k for k in KINDS if k != "hnsw_rabitq4")  # (its build takes ~200 s at 100K rows)
TRAIN_ROWS = 65_536
#: Coarse quantizers of the IVF indexes made here (the index borrows its quantizer).
_COARSE: list = []


def new_index(kind: str, dim: int, rows: int):
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "hnsw_flat":
        return faiss.IndexHNSWFlat(dim, M, ip)
    if kind.startswith("hnsw_sq"):
        bits = {"8": faiss.ScalarQuantizer.QT_8bit, "6": faiss.ScalarQuantizer.QT_6bit,
                "4": faiss.ScalarQuantizer.QT_4bit}[kind[-1]]
        return faiss.IndexHNSWSQ(dim, bits, M, ip)
    if kind.startswith("hnsw_rabitq"):
        return faiss.IndexHNSWRaBitQ(dim, M, int(kind[len("hnsw_rabitq"):]), faiss.METRIC_L2)
    lists = int(4 * math.sqrt(rows))
    coarse = faiss.IndexFlatIP(dim)
    if kind == "ivf_sq8":
        index = faiss.IndexIVFScalarQuantizer(coarse, dim, lists, faiss.ScalarQuantizer.QT_8bit, ip)
    else:
        index = faiss.IndexIVFPQ(coarse, dim, lists, 48, 8, ip)
    _COARSE.append(coarse)  # (faiss' wrapper refuses new attributes: kept alive here)
    return index


def study(kind: str, X: np.ndarray, Q: np.ndarray, gt: np.ndarray, workdir: Path, quick: bool) -> dict:
    import faiss

    faiss.omp_set_num_threads(THREADS)
    index = new_index(kind, X.shape[1], len(X))
    if hasattr(index, "hnsw"):
        index.hnsw.efConstruction = EF_CONSTRUCTION
    t0 = time.perf_counter()
    if not index.is_trained:
        sample = np.random.default_rng(0).choice(len(X), min(len(X), TRAIN_ROWS), replace=False)
        index.train(X[np.sort(sample)])
    for s in range(0, len(X), 8192):
        index.add(X[s:s + 8192])
    build_s = time.perf_counter() - t0
    path = workdir / f"{kind}.index"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    print(f"{kind}: built in {build_s:.1f} s, {size / len(X):.0f} bytes/row", flush=True)
    faiss.omp_set_num_threads(1)
    graph = hasattr(index, "hnsw")
    settings = (EFS[::2] if quick else EFS) if graph else (NPROBES[::2] if quick else NPROBES)
    sweep = []
    for setting in settings:
        if graph:
            index.hnsw.efSearch = setting
            width = max(K, min(setting, 4 * K))
        else:
            index.nprobe = setting
            width = 4 * K

        def run(q, width=width):
            _, found = index.search(q[None], width)
            candidates = found[0][found[0] >= 0]
            return candidates[np.argsort(-(X[candidates] @ q), kind="stable")[:K]]

        results, lat = time_each(run, Q)
        point = {"setting": setting, "recall": recall_at_k(results, gt), "p50_ms": float(np.percentile(lat, 50)) / 1e6,
                 "p99_ms": float(np.percentile(lat, 99)) / 1e6}
        sweep.append(point)
        print(f"  {'ef' if graph else 'nprobe'}={setting}: recall {point['recall']:.4f} p50 {point['p50_ms']:.3f} ms",
              flush=True)
    return {"build_s": build_s, "index_bytes": size, "bytes_per_row": size / len(X),
            "parameter": "ef" if graph else "nprobe", "sweep": sweep,
            "p50_at_0.95": p50_at_recall([(p["recall"], p["p50_ms"]) for p in sweep], 0.95)}


def markdown(res: dict) -> str:
    rows = res["rows"]
    L = ["# Index types over the same rows", "", f"`{res['command']}`", "",
         f"{rows:,} x {res['dim']} unit vectors (pypi-minilm-100k), {res['queries']:,} queries, k=10, "
         f"build with {THREADS} threads, search one query at a time on one thread; the top-10 re-scored exactly "
         "from the float32 vectors (best 4k candidates). Float32 vectors alone take "
         f"{res['dim'] * 4:,} bytes/row.", "",
         *md_table(["index", "build s", "index bytes/row", "best recall", "p50 at recall 0.95 (ms)"], "lrrrr",
                   [[k, f"{v['build_s']:.1f}", f"{v['bytes_per_row']:,.0f}", f4(max(p["recall"] for p in v["sweep"])),
                     f3(v["p50_at_0.95"])] for k, v in res["kinds"].items()]), "",
         "## Sweeps", ""]
    for kind, v in res["kinds"].items():
        L += [f"### {kind}", "", *md_table([v["parameter"], "recall@10", "p50 ms", "p99 ms"], "rrrr",
                                          [[p["setting"], f4(p["recall"]), f3(p["p50_ms"]), f3(p["p99_ms"])]
                                           for p in v["sweep"]]), ""]
    L += machine_section(res["machine"], res["wall_s"], f"faiss {res['machine'].get('faiss')}")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help=f"of {', '.join(KINDS)} (default: %(default)s)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--quick", action="store_true", help="every other search setting")
    p.add_argument("--out", type=Path)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        p.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")

    def machine(workdir: Path) -> dict:
        import faiss

        return machine_info(workdir, lambda: {"faiss": faiss.__version__})

    with Run(args, "index_types", machine) as run:
        data = load_dataset(args.data, args.rows, args.queries, columns=["id", "vector"])
        X = data.X / np.linalg.norm(data.X, axis=1, keepdims=True)
        Q = data.Q / np.linalg.norm(data.Q, axis=1, keepdims=True)
        gt, source = ground_truth(args.data, X, Q, K, args.rows)
        run.res.update({"rows": args.rows, "dim": data.dim, "queries": len(Q), "truth": source, "kinds": {}})
        for kind in kinds:
            run.res["kinds"][kind] = study(kind, np.ascontiguousarray(X), np.ascontiguousarray(Q), gt, run.workdir,
                                           args.quick)
        run.finish(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
