#!/usr/bin/env python
"""Core benchmark: omendb next to the raw bound it should approach, in one run.

Measures, on the pypi-minilm-100k dataset (100,000 x 384, unit vectors):

1. durable ingest in 1,000-row batches (``omendb.open(fsync=True)``, cosine table)
   vs. appending each batch's Arrow IPC stream bytes to a plain file with one
   ``os.fsync`` per batch (a warm-up round, then two timed rounds alternating the
   sides; the faster timed pass of each side is compared);       target ratio >= 0.5
   and vs. a double-write reference: the raw writer while a background thread writes the
   same bytes again as segment-sized files (what a log-then-segment store like omendb
   must write, with no work of its own);
2. exact single-query search latency p50/p99 (``tbl.search(q, k=10, exact=True)``
   on the flushed, closed and reopened table) vs. NumPy ``X @ q`` + argpartition
   over the same vectors held in memory as float32;               target ratio <= 1.3
3. 1,000 queries as one batch (``tbl.search(Q, k=10, exact=True)``) vs. NumPy
   ``Q @ X.T`` + per-row argpartition (plain and chunked);       target ratio <= 1.2
4. RSS / RssAnon of a FRESH process after opening the table and after its first
   search (opening must not read the vectors into anonymous memory);
5. recall@10 of exact search vs. gt.parquet (sanity, ~1.0).

Results: benchmarks/results/core.json and core.md (``--quick``: core-quick.*; ``--out``,
``--name`` to change). omendb's background HNSW builder, where it exists, is off unless
``--build-indexes``: exact search does not use it and a build would race the timings.

    python benchmarks/bench_core.py            # full run (100K rows); run it alone
    python benchmarks/bench_core.py --quick    # 20K rows, fewer queries: sanity check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil  # imported up front, as it always was: the RSS probe's baseline is "after imports"
import pyarrow as pa
import pyarrow.parquet as pq

import omendb
from _harness import (RESULTS, alternating_rounds, command_line, dataset_schema, dir_bytes,
                      float32_table, lat_summary, load_dataset, machine_info as harness_machine_info,
                      machine_section, memory_mib, now_ns, num, package_version, parser, pct, read_gt,
                      recall_at_k, timed, write_report, yes)

TABLE = "pypi"
K = 10
#: NumPy chunked batch path: the same score-block budget omendb's flat scan uses.
CHUNK_BYTES = 64 << 20


# ----------------------------------------------------------------------------- helpers
#: thread variables this report records (both sides share them)
ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
       "NUMEXPR_MAX_THREADS")


def machine_info(workdir: Path) -> dict:
    """The harness' machine facts plus numexpr's threads and the BLAS pools (threadpoolctl) when present."""
    info = harness_machine_info(workdir, lambda: {"numexpr": package_version("numexpr"),
                                                   "psutil": psutil.__version__},
                                env=ENV, host=True)
    try:
        import numexpr
        info["numexpr_threads"] = numexpr.get_num_threads()
    except Exception:  # pragma: no cover - informational only
        pass
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for p in threadpool_info() if p.get("user_api") == "blas"]
    except Exception:  # pragma: no cover - threadpoolctl is optional
        pass
    return info


def open_kwargs(build_indexes: bool) -> dict:
    """Options for ``omendb.open`` besides its defaults (fsync=True, default memtable).

    Versions with a background HNSW builder get ``build_indexes=False`` unless asked:
    a build racing the timings (and holding a copy of the vectors) is not what these
    benchmarks measure. Exact search never uses the graphs either way.
    """
    import inspect

    if not build_indexes and "build_indexes" in inspect.signature(omendb.open).parameters:
        return {"build_indexes": False}
    return {}


def settled_delete(path: Path) -> None:
    """Delete a pass's files and let the filesystem finish with it before the next pass.

    ``sync`` commits the deletion now: on a filesystem mounted with ``discard`` the freed
    blocks are trimmed at that commit, which is then not in the next pass's timings.
    """
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    os.sync()


def memtable_default() -> int:
    """omendb's default ``memtable_bytes``: the size of the segments its flushes write."""
    import inspect

    parameter = inspect.signature(omendb.open).parameters.get("memtable_bytes")
    return parameter.default if parameter is not None else 64 << 20


def builder_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if "index-builder" in t.name and t.is_alive()]


# ----------------------------------------------------------------------------- data
def ipc_stream(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue()


# ----------------------------------------------------------------------------- 1. ingest
def raw_ingest(table: pa.Table, batch: int, path: Path) -> dict:
    """Each batch's Arrow IPC stream appended to a plain file, one os.fsync per batch.

    The file is left in place for the caller to delete.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    encode_ns, io_ns, nbytes = [], [], 0
    try:
        for start in range(0, table.num_rows, batch):
            part = table.slice(start, batch)
            t0 = now_ns()
            payload = memoryview(ipc_stream(part))
            t1 = now_ns()
            view = payload
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            t2 = now_ns()
            encode_ns.append(t1 - t0)
            io_ns.append(t2 - t1)
            nbytes += len(payload)
    finally:
        os.close(fd)
    rows = table.num_rows
    return {
        "rows": rows, "batches": len(io_ns), "bytes": nbytes,
        "seconds_io": sum(io_ns) / 1e9,
        "seconds_with_encode": (sum(io_ns) + sum(encode_ns)) / 1e9,
        "rows_per_s": rows / (sum(io_ns) / 1e9),
        "rows_per_s_with_encode": rows / ((sum(io_ns) + sum(encode_ns)) / 1e9),
        "batch_p50_ms": pct(io_ns, 50), "batch_p99_ms": pct(io_ns, 99),
    }


def double_write_ingest(table: pa.Table, batch: int, directory: Path, segment_bytes: int) -> dict:
    """The raw bound, plus every byte written a second time as a segment-sized file.

    A store with a write-ahead log that flushes its memtable to segment files writes each
    row twice: to the log before it acknowledges the row, and to a segment when the
    memtable fills. This is that I/O with none of a database's own work: each batch's IPC
    bytes appended to a log file with one ``os.fsync`` (exactly as :func:`raw_ingest`),
    and every ``segment_bytes`` of them handed to one background thread that writes them
    to a new file and ``fdatasync``s it, as omendb's flusher does while adds go on. The
    second copy is written plainly, all at once: omendb paces its segment write-back
    between log commits, so this is a reference, not a bound omendb cannot pass.
    Timed like omendb's adds: the log writes only; waiting for the last file is "with close".
    The files are left in ``directory`` for the caller to delete.
    """
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "log.bin"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    jobs: list[list[pa.Buffer] | None] = []  # None: no more files
    ready = threading.Condition()
    done: dict = {"files": 0, "error": None}

    def write_segments() -> None:
        while True:
            with ready:
                ready.wait_for(lambda: jobs)
                parts = jobs.pop(0)
            if parts is None:
                return
            if done["error"] is not None:
                continue
            try:
                seg = os.open(directory / f"seg-{done['files']}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    for part in parts:
                        view = memoryview(part)
                        while view:
                            view = view[os.write(seg, view):]
                    os.fdatasync(seg)
                finally:
                    os.close(seg)
            except OSError as exc:
                done["error"] = exc
            done["files"] += 1

    def hand_over(parts) -> None:
        with ready:
            jobs.append(parts)
            ready.notify()

    flusher = threading.Thread(target=write_segments, name="double-write-flusher")
    flusher.start()
    io_ns, pending, pending_bytes = [], [], 0
    try:
        for start in range(0, table.num_rows, batch):
            payload = ipc_stream(table.slice(start, batch))
            t0 = now_ns()
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            io_ns.append(now_ns() - t0)
            pending.append(payload)
            pending_bytes += len(payload)
            if pending_bytes >= segment_bytes:
                hand_over(pending)
                pending, pending_bytes = [], 0
        t0 = now_ns()
        if pending:
            hand_over(pending)
        hand_over(None)
        flusher.join()
        close_ns = now_ns() - t0
    finally:
        if flusher.is_alive():
            hand_over(None)
            flusher.join()
        os.close(fd)
    if done["error"] is not None:
        raise RuntimeError(f"double-write reference: writing a segment-sized file failed: {done['error']}")
    rows = table.num_rows
    return {
        "rows": rows, "batches": len(io_ns), "segment_bytes": segment_bytes, "segment_files": done["files"],
        "seconds_io": sum(io_ns) / 1e9, "seconds_close": close_ns / 1e9,
        "rows_per_s": rows / (sum(io_ns) / 1e9),
        "rows_per_s_with_close": rows / ((sum(io_ns) + close_ns) / 1e9),
        "batch_p50_ms": pct(io_ns, 50), "batch_p99_ms": pct(io_ns, 99),
    }


def omendb_ingest(table: pa.Table, batch: int, db_dir: Path, dim: int, kwargs: dict) -> dict:
    db = omendb.open(db_dir, **kwargs)  # fsync=True, default memtable size
    tbl = db.create_table(TABLE, schema=dataset_schema(dim), metric="cosine")
    add_ns = []
    gc.collect()
    for start in range(0, table.num_rows, batch):
        part = table.slice(start, batch)
        t0 = now_ns()
        added = tbl.add(part)
        add_ns.append(now_ns() - t0)
        if added != part.num_rows:
            raise RuntimeError(f"add() returned {added}, expected {part.num_rows}")
    stats_before_close = tbl.stats()
    t0 = now_ns()
    db.close()  # flushes the memtable to a segment
    close_ns = now_ns() - t0
    rows = table.num_rows
    adds = sum(add_ns) / 1e9
    slow = np.argsort(add_ns)[::-1][:3]
    return {
        "rows": rows, "batches": len(add_ns),
        "seconds_adds": adds, "seconds_close": close_ns / 1e9,
        "rows_per_s": rows / adds,
        "rows_per_s_with_close": rows / (adds + close_ns / 1e9),
        "add_p50_ms": pct(add_ns, 50), "add_p99_ms": pct(add_ns, 99), "add_max_ms": max(add_ns) / 1e6,
        "slowest_adds": [{"batch": int(i), "ms": add_ns[i] / 1e6} for i in slow],
        "segments_before_close": stats_before_close["segments"],
        "memtable_rows_before_close": stats_before_close["memtable_rows"],
        "table_bytes_on_disk": dir_bytes(db_dir / TABLE),
    }


# ----------------------------------------------------------------------------- 2./3. search
def np_single(X: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = X @ q
    idx = np.argpartition(scores, -k)[-k:]
    return idx[np.argsort(-scores[idx], kind="stable")]


def np_batch_block(X: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    scores = Q @ X.T
    idx = np.argpartition(scores, -k, axis=1)[:, -k:]
    top = np.take_along_axis(scores, idx, axis=1)
    return np.take_along_axis(idx, np.argsort(-top, axis=1, kind="stable"), axis=1)


def np_batch_chunked(X: np.ndarray, Q: np.ndarray, k: int, rows_per_chunk: int) -> np.ndarray:
    out = np.empty((Q.shape[0], k), dtype=np.int64)
    for start in range(0, Q.shape[0], rows_per_chunk):
        out[start:start + rows_per_chunk] = np_batch_block(X, Q[start:start + rows_per_chunk], k)
    return out


def result_ids(result: pa.Table, n_queries: int, k: int) -> np.ndarray:
    ids = result.column("id").to_numpy()
    if ids.size != n_queries * k:
        raise RuntimeError(f"search returned {ids.size} rows, expected {n_queries * k}")
    if "_query" in result.column_names:
        qcol = result.column("_query").to_numpy()
        if not np.array_equal(qcol, np.repeat(np.arange(n_queries), k)):
            raise RuntimeError("batch search rows are not grouped by query in order")
    return ids.reshape(n_queries, k)


def bench_single(tbl, X: np.ndarray, Q: np.ndarray, k: int, warmup: int) -> dict:
    """Interleaved per query: omendb (all columns), omendb (id only), NumPy."""
    n = Q.shape[0]
    for i in range(min(warmup, n)):
        tbl.search(Q[i], k=k, exact=True)
        tbl.search(Q[i], k=k, exact=True, columns=["id"])
        np_single(X, Q[i], k)
    omen_ns, omen_id_ns, np_ns, agree = [], [], [], 0
    gc.collect()
    for i in range(n):
        q = Q[i]
        t0 = now_ns()
        res = tbl.search(q, k=k, exact=True)
        t1 = now_ns()
        tbl.search(q, k=k, exact=True, columns=["id"])
        t2 = now_ns()
        ref = np_single(X, q, k)
        t3 = now_ns()
        omen_ns.append(t1 - t0)
        omen_id_ns.append(t2 - t1)
        np_ns.append(t3 - t2)
        agree += len(set(res.column("id").to_pylist()) & set(ref.tolist()))
    out = {"queries": n, "omendb": lat_summary(omen_ns, brief=True),
           "omendb_id_only": lat_summary(omen_id_ns, brief=True), "numpy": lat_summary(np_ns, brief=True)}
    out["ratio_p50"] = out["omendb"]["p50_ms"] / out["numpy"]["p50_ms"]
    out["ratio_p99"] = out["omendb"]["p99_ms"] / out["numpy"]["p99_ms"]
    out["ratio_p50_id_only"] = out["omendb_id_only"]["p50_ms"] / out["numpy"]["p50_ms"]
    out["overlap_with_numpy_at10"] = agree / (n * k)
    return out


def bench_batch(tbl, X: np.ndarray, Q: np.ndarray, k: int, repeats: int) -> tuple[dict, np.ndarray, np.ndarray]:
    nq = Q.shape[0]
    chunk_rows = max(1, CHUNK_BYTES // (4 * X.shape[0]))
    # warm-up (small) so first-call effects do not land in the timings
    tbl.search(Q[:8], k=k, exact=True)
    np_batch_block(X, Q[:8], k)

    def omendb_side(_round: int) -> tuple[int, np.ndarray]:
        ns, res = timed(lambda: tbl.search(Q, k=k, exact=True))
        return ns, result_ids(res, nq, k)  # the result table is dropped before the next side

    # repeats x (omendb, NumPy plain, NumPy chunked), a gc.collect() before each
    rounds = alternating_rounds({"omendb": omendb_side,
                                 "numpy_plain": lambda _: timed(lambda: np_batch_block(X, Q, k)),
                                 "numpy_chunked": lambda _: timed(lambda: np_batch_chunked(X, Q, k, chunk_rows))},
                                repeats)
    omen_ids, ref_ids, chunked = (rounds[-1][name][1] for name in ("omendb", "numpy_plain", "numpy_chunked"))
    out = {"queries": nq, "repeats": repeats, "numpy_chunk_queries": chunk_rows}
    for name in ("omendb", "numpy_plain", "numpy_chunked"):
        samples = [r[name][0] for r in rounds]
        out[name] = {"median_s": float(np.median(samples)) / 1e9, "min_s": min(samples) / 1e9,
                     "all_s": [s / 1e9 for s in samples]}
    best_np = min(out["numpy_plain"]["median_s"], out["numpy_chunked"]["median_s"])
    out["ratio_vs_best_numpy"] = out["omendb"]["median_s"] / best_np
    out["ratio_vs_plain"] = out["omendb"]["median_s"] / out["numpy_plain"]["median_s"]
    out["ratio_vs_chunked"] = out["omendb"]["median_s"] / out["numpy_chunked"]["median_s"]
    out["numpy_chunked_equals_plain"] = bool(np.array_equal(np.sort(chunked, 1), np.sort(ref_ids, 1)))
    return out, omen_ids, ref_ids


def bench_recall(data: Path, query_ids: np.ndarray, rows: int, total_rows: int, omen_ids: np.ndarray,
                 numpy_ids: np.ndarray, k: int) -> dict:
    out = {"queries": int(omen_ids.shape[0]), "k": k}
    if rows == total_rows:
        gt_qid, neighbors = read_gt(data)
        by_qid = {int(q): i for i, q in enumerate(gt_qid)}
        truth = neighbors[[by_qid[int(q)] for q in query_ids]]
        out["truth"] = "gt.parquet"
        out["recall_omendb"] = recall_at_k(omen_ids, truth, k)
        out["recall_numpy"] = recall_at_k(numpy_ids, truth, k)
    else:
        out["truth"] = f"NumPy brute force over the first {rows} rows (gt.parquet covers all {total_rows})"
        out["recall_omendb"] = recall_at_k(omen_ids, numpy_ids, k)
        out["recall_numpy"] = 1.0
    return out


# ----------------------------------------------------------------------------- 4. RSS probe
def top_modules() -> set[str]:
    return {name.partition(".")[0] for name in list(sys.modules)}


def rss_probe(db_dir: str, query_file: str, preimport: str | None, kwargs: dict) -> None:
    """Runs in a fresh process: memory after imports, after open, after first search."""
    q = np.load(query_file)
    for module in filter(None, (preimport or "").split(",")):
        try:
            __import__(module)
        except ImportError:
            pass
    gc.collect()
    out = {"preimported": preimport or "", "after_imports": memory_mib()}
    seen = top_modules()
    t0 = now_ns()
    db = omendb.open(db_dir, **kwargs)
    tbl = db.open_table(TABLE)
    out["open_kwargs"] = kwargs
    out["open_ms"] = (now_ns() - t0) / 1e6
    out["rows"] = tbl.count()
    out["after_open"] = memory_mib()
    out["modules_imported_by_open"] = sorted(top_modules() - seen)
    seen = top_modules()
    t0 = now_ns()
    tbl.search(q[0], k=K, exact=True)
    out["first_search_ms"] = (now_ns() - t0) / 1e6
    out["after_first_search"] = memory_mib()
    out["modules_imported_by_first_search"] = sorted(top_modules() - seen)
    out["index_builder_threads_after_first_search"] = builder_threads()
    t0 = now_ns()
    tbl.search(q[1 % len(q)], k=K, exact=True)
    out["second_search_ms"] = (now_ns() - t0) / 1e6
    out["after_second_search"] = memory_mib()
    db.close()
    print(json.dumps(out))


def run_probe(db_dir: Path, qfile: Path, kwargs: dict, preimport: str = "") -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-probe", str(db_dir), "--rss-query", str(qfile),
           "--rss-open-kwargs", json.dumps(kwargs)]
    if preimport:
        cmd += ["--rss-preimport", preimport]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"RSS probe failed ({proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    base = out["after_imports"]
    for stage in ("after_open", "after_first_search", "after_second_search"):
        out[stage + "_delta"] = {key: out[stage][key] - base[key] for key in base}
    return out


def bench_rss(db_dir: Path, Q: np.ndarray, rows: int, dim: int, kwargs: dict) -> dict:
    """Fresh process as a user would start it; then again with pandas already imported,
    because pyarrow's ``Array.to_numpy`` imports pandas lazily (~25 MiB of anonymous
    memory that has nothing to do with the table's size)."""
    qfile = db_dir.parent / "rss_queries.npy"
    np.save(qfile, Q[:2])
    try:
        out = run_probe(db_dir, qfile, kwargs)
        out["pandas_preimported"] = run_probe(db_dir, qfile, kwargs, "pandas")
        if kwargs:  # also as a user opens it: omendb.open(path) with every default
            out["default_open"] = run_probe(db_dir, qfile, {})
    finally:
        qfile.unlink(missing_ok=True)
    out["vector_mib"] = rows * dim * 4 / (1 << 20)
    return out


# ----------------------------------------------------------------------------- report
def blas_text(machine: dict) -> str:
    libs = machine.get("blas") or []
    return ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')}, "
                     f"{b.get('num_threads')} threads)" for b in libs) or "?"


def markdown(res: dict) -> str:
    m, cfg = res["machine"], res["config"]
    ing, single, batch, rss, rec = res["ingest"], res["single"], res["batch"], res["rss"], res["recall"]
    raw = ing["raw"]
    lines = [
        f"# omendb core benchmark{' (--quick)' if cfg['quick'] else ''}",
        "",
        f"`{res['command']}`",
        "",
        f"{cfg['rows']:,} rows x {cfg['dim']} dims (pypi-minilm-100k, float16 on disk -> float32), cosine, k={K}; "
        f"ingest batches of {cfg['batch_rows']:,}; {single['queries']} single queries; "
        f"{batch['queries']} queries per batch x {batch['repeats']} repeats. "
        f"`omendb.open(path{''.join(f', {k}={v!r}' for k, v in cfg['omendb_open_kwargs'].items())})` "
        f"(fsync=True default{'; background HNSW builder off, `--build-indexes` to keep it' if cfg['omendb_open_kwargs'] else ''}); "
        f"indexed segments at the end: {res['table_stats'].get('indexed_segments', 0)} of "
        f"{res['table_stats'].get('segments', '?')}.",
        "",
        "| benchmark | omendb | raw bound / NumPy | ratio | target | met |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
        f"| durable ingest, rows/s (adds; each returns durable) | {num(ing['omendb']['rows_per_s'], 0)} | "
        f"{num(raw['rows_per_s'], 0)} | {num(ing['ratio'], 3)}x | >= 0.5x | {yes(ing['ratio'] >= 0.5)} |",
        f"| durable ingest incl. final close/flush, rows/s | {num(ing['omendb']['rows_per_s_with_close'], 0)} | "
        f"{num(raw['rows_per_s'], 0)} | {num(ing['ratio_with_close'], 2)}x | | |",
    ]
    double = ing.get("double_write")
    if double:
        lines += [
            f"| double-write reference (below) vs raw bound, rows/s | {num(double['rows_per_s'], 0)} | "
            f"{num(raw['rows_per_s'], 0)} | {num(ing['double_write_vs_raw'], 3)}x | | |",
            f"| durable ingest vs double-write reference, rows/s | {num(ing['omendb']['rows_per_s'], 0)} | "
            f"{num(double['rows_per_s'], 0)} | {num(ing['ratio_vs_double_write'], 3)}x | | |",
        ]
    lines += [
        f"| exact single query p50, ms | {num(single['omendb']['p50_ms'])} | {num(single['numpy']['p50_ms'])} | "
        f"{num(single['ratio_p50'], 2)}x | <= 1.3x | {yes(single['ratio_p50'] <= 1.3)} |",
        f"| exact single query p99, ms | {num(single['omendb']['p99_ms'])} | {num(single['numpy']['p99_ms'])} | "
        f"{num(single['ratio_p99'], 2)}x | | |",
        f"| exact single query p50, `columns=['id']`, ms | {num(single['omendb_id_only']['p50_ms'])} | "
        f"{num(single['numpy']['p50_ms'])} | {num(single['ratio_p50_id_only'], 2)}x | | |",
        f"| batch of {batch['queries']} queries, s (median) | {num(batch['omendb']['median_s'])} | "
        f"plain {num(batch['numpy_plain']['median_s'])} / chunked {num(batch['numpy_chunked']['median_s'])} | "
        f"{num(batch['ratio_vs_best_numpy'], 2)}x (vs plain {num(batch['ratio_vs_plain'], 2)}x) | <= 1.2x | "
        f"{yes(batch['ratio_vs_best_numpy'] <= 1.2)} |",
        f"| recall@10, exact ({rec['queries']} queries) | {num(rec['recall_omendb'], 4)} | "
        f"{num(rec['recall_numpy'], 4)} | | ~1.0 | {yes(rec['recall_omendb'] >= 0.999)} |",
        "",
        f"Raw bound: each batch's Arrow IPC stream ({raw['bytes'] / raw['batches'] / 1024:,.0f} KiB/batch) "
        f"appended to a plain file + `os.fsync`. "
        + (f"A warm-up round (raw {num(ing['warmup']['raw']['rows_per_s'], 0)}, omendb "
           f"{num(ing['warmup']['omendb']['rows_per_s'], 0)} rows/s, add max {num(ing['warmup']['omendb']['add_max_ms'], 1)} ms; "
           f"double-write {num(ing['warmup']['double_write']['rows_per_s'], 0)} rows/s: a process's first pass "
           f"faults its memory in slowly on this VM), then two timed rounds, each raw, omendb, double-write; "
           if "warmup" in ing else "Two passes per side, alternated; ")
        + f"each side's faster timed pass is reported (raw "
        f"{' / '.join(num(p['rows_per_s'], 0) for p in ing['raw_passes'])} rows/s, omendb "
        f"{' / '.join(num(p['rows_per_s'], 0) for p in ing.get('omendb_passes', [ing['omendb']]))} rows/s). "
        f"Raw including IPC encoding {num(raw['rows_per_s_with_encode'], 0)} rows/s. "
        + (f"Double-write reference: the raw writer while one background thread writes the same bytes again, "
           f"{double['segment_bytes'] >> 20} MiB (omendb's default memtable) to a new file + `fdatasync` at a time "
           f"({double['segment_files']} file(s)), the I/O of a log-then-segment store with no work of its own "
           f"(written plainly: omendb paces its segment write-back between log commits, so it can beat this); timed "
           f"like the adds (log writes only), passes {' / '.join(num(p['rows_per_s'], 0) for p in ing['double_write_passes'])} "
           f"rows/s, {num(double['rows_per_s_with_close'], 0)} rows/s including the wait for its last file. "
           if double else "")
        + f"omendb add latency p50 {num(ing['omendb']['add_p50_ms'], 2)} ms, p99 {num(ing['omendb']['add_p99_ms'], 2)} ms, "
        f"max {num(ing['omendb']['add_max_ms'], 1)} ms; final close {num(ing['omendb']['seconds_close'], 2)} s; "
        f"{ing['omendb']['segments_before_close']} segment(s) before close; table on disk "
        f"{ing['omendb']['table_bytes_on_disk'] / (1 << 20):,.1f} MiB.",
        "",
        f"Search runs on the table after close + reopen (first search after reopen: {num(single['first_search_after_reopen_ms'], 1)} ms). "
        f"NumPy side: `X @ q` / `Q @ X.T` on the same float32 vectors in memory, argpartition + sort of the top {K}; "
        f"chunked = {batch['numpy_chunk_queries']} queries per block (64 MiB score block, as omendb). "
        f"Single-query overlap omendb vs NumPy: {num(single['overlap_with_numpy_at10'], 4)}.",
        "",
        "## Memory of a fresh process opening the table (MiB)",
        "",
        f"Vectors in the table: {rss['vector_mib']:,.1f} MiB float32. Deltas are against the same process after imports.",
        "",
        "| stage | RSS | RssAnon | RssFile | RSS delta | RssAnon delta | RssFile delta |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage in ("after_imports", "after_open", "after_first_search", "after_second_search"):
        s = rss[stage]
        d = rss.get(stage + "_delta", {"rss_mib": 0.0, "rss_anon_mib": 0.0, "rss_file_mib": 0.0})
        lines.append(f"| {stage.replace('_', ' ')} | {num(s['rss_mib'], 1)} | {num(s['rss_anon_mib'], 1)} | "
                     f"{num(s['rss_file_mib'], 1)} | {num(d['rss_mib'], 1)} | {num(d['rss_anon_mib'], 1)} | "
                     f"{num(d['rss_file_mib'], 1)} |")
    pre = rss["pandas_preimported"]
    lines += [
        "",
        f"Open: {num(rss['open_ms'], 1)} ms; first search: {num(rss['first_search_ms'], 1)} ms "
        f"(maps the segments and verifies their CRC-32); second search: {num(rss['second_search_ms'], 1)} ms. "
        f"Modules first imported by open: {', '.join(rss['modules_imported_by_open']) or 'none'}; "
        f"by the first search: {', '.join(rss['modules_imported_by_first_search']) or 'none'}.",
        "",
        f"Same probe with pandas imported before the baseline (isolates the table's own memory): "
        f"RssAnon delta after open {num(pre['after_open_delta']['rss_anon_mib'], 1)} MiB, after first search "
        f"{num(pre['after_first_search_delta']['rss_anon_mib'], 1)} MiB, RssFile delta after first search "
        f"{num(pre['after_first_search_delta']['rss_file_mib'], 1)} MiB "
        f"(vectors: {num(rss['vector_mib'], 1)} MiB).",
    ]
    default = rss.get("default_open")
    if default:
        lines += [
            "",
            f"Same probe with plain `omendb.open(path)` (every default, background index builder on): RssAnon delta "
            f"after open {num(default['after_open_delta']['rss_anon_mib'], 1)} MiB, after first search "
            f"{num(default['after_first_search_delta']['rss_anon_mib'], 1)} MiB, after second search "
            f"{num(default['after_second_search_delta']['rss_anon_mib'], 1)} MiB; builder threads alive after the "
            f"first search: {len(default['index_builder_threads_after_first_search'])}.",
        ]
    libraries = (f"Python {m['python']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}, numexpr {m['numexpr']} "
                 f"({m.get('numexpr_threads')} threads), psutil {m['psutil']}")
    lines += ["", *machine_section({**m, "loadavg_at_end": res["loadavg_at_end"]}, res["wall_seconds"], libraries, [
        f"- BLAS: {blas_text(m)}", *([] if m["env"] else ["- env: (no BLAS/thread variables set)"]),
        "- page cache not dropped; a load average above ~0 means other work shared the CPUs"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="20,000 rows, fewer queries: a fast sanity run")
    p.add_argument("--rows", type=int, help="base rows to use (default 100000, --quick 20000)")
    p.add_argument("--batch-rows", type=int, default=1000, help="rows per add() (default %(default)s)")
    p.add_argument("--single-queries", type=int, help="single-query searches (default 200, --quick 50)")
    p.add_argument("--batch-queries", type=int, help="queries in the batch search (default 1000, --quick 250)")
    p.add_argument("--batch-repeats", type=int, help="repeats of the batch search (default 3, --quick 2)")
    p.add_argument("--warmup", type=int, default=5, help="untimed single queries first (default %(default)s)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                   help="parent of the temporary database folder (default %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="results folder (default benchmarks/results)")
    p.add_argument("--name", help="result file stem (default core, --quick core-quick)")
    p.add_argument("--keep", action="store_true", help="keep the temporary database folder")
    p.add_argument("--rss-probe", help=argparse.SUPPRESS)
    p.add_argument("--rss-query", help=argparse.SUPPRESS)
    p.add_argument("--rss-preimport", help=argparse.SUPPRESS)
    p.add_argument("--rss-open-kwargs", help=argparse.SUPPRESS)
    p.add_argument("--build-indexes", action="store_true",
                   help="keep omendb's background HNSW builder on (default: off when omendb has one)")
    args = p.parse_args(argv)
    args.rows = args.rows or (20_000 if args.quick else 100_000)
    args.single_queries = args.single_queries or (50 if args.quick else 200)
    args.batch_queries = args.batch_queries or (250 if args.quick else 1000)
    args.batch_repeats = args.batch_repeats or (2 if args.quick else 3)
    args.name = args.name or ("core-quick" if args.quick else "core")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_probe:
        rss_probe(args.rss_probe, args.rss_query, args.rss_preimport, json.loads(args.rss_open_kwargs or "{}"))
        return 0
    started = time.perf_counter()
    data = args.data.resolve()
    command = command_line()
    n_queries = max(args.single_queries, args.batch_queries)
    kwargs = open_kwargs(args.build_indexes)
    print(f"loading {data} ({args.rows:,} rows, {n_queries} queries)", flush=True)
    total_rows = pq.ParquetFile(data / "base.parquet").metadata.num_rows
    base, X, Q, dim, query_ids = load_dataset(data, args.rows, n_queries)
    table = float32_table(base, X)  # vectors sharing memory with X
    del base

    tmp = Path(tempfile.mkdtemp(prefix="omendb-bench-", dir=args.workdir))
    results: dict = {"command": command, "cwd": os.getcwd(), "machine": machine_info(tmp),
                     "config": {"quick": args.quick, "rows": args.rows, "dim": dim, "k": K, "metric": "cosine",
                                "batch_rows": args.batch_rows, "single_queries": args.single_queries,
                                "batch_queries": args.batch_queries, "batch_repeats": args.batch_repeats,
                                "data": str(data), "omendb_open_kwargs": kwargs}}
    try:
        db_dir = tmp / "db.omen"
        # 1. ingest. One warm-up round, then two timed rounds, each side's faster timed pass
        # reported; each round runs raw, omendb, double-write. On this VM memory a process
        # touches for the first time (or after it lay free for seconds) faults in slowly (the
        # host backs it lazily), and omendb touches more of it than the raw writer (its
        # memtable, the pages of its log and a segment): a process's first omendb pass stalls
        # for 10-100 ms at a time where later ones do not. Every pass, warm-up included, is in
        # the JSON and the markdown.
        segment_bytes = kwargs.get("memtable_bytes", memtable_default())

        def ingest_round(name: str, omendb_dir: Path) -> tuple[dict, dict, dict]:
            print(f"1/5 ingest ({name}): raw bound ...", flush=True)
            raw_pass = raw_ingest(table, args.batch_rows, tmp / "raw.bin")
            settled_delete(tmp / "raw.bin")
            print(f"1/5 ingest ({name}): omendb ...", flush=True)
            omen_pass = omendb_ingest(table, args.batch_rows, omendb_dir, dim, kwargs)
            print(f"1/5 ingest ({name}): double-write reference ...", flush=True)
            double_pass = double_write_ingest(table, args.batch_rows, tmp / "double", segment_bytes)
            settled_delete(tmp / "double")
            print(f"    raw {raw_pass['rows_per_s']:,.0f} rows/s, omendb {omen_pass['rows_per_s']:,.0f} rows/s, "
                  f"double-write {double_pass['rows_per_s']:,.0f} rows/s", flush=True)
            return raw_pass, omen_pass, double_pass

        warmup = dict(zip(("raw", "omendb", "double_write"), ingest_round("warm-up", tmp / "warmup.omen")))
        settled_delete(tmp / "warmup.omen")
        raw_passes, omen_passes, double_passes = (list(side) for side in zip(
            ingest_round("timed 1/2", db_dir), ingest_round("timed 2/2", tmp / "db-pass-2.omen")))
        shutil.rmtree(tmp / "db-pass-2.omen")  # the searches below run on the first pass's table
        raw = max(raw_passes, key=lambda r: r["rows_per_s"])
        double = max(double_passes, key=lambda r: r["rows_per_s"])
        omen = max(omen_passes, key=lambda r: r["rows_per_s"])
        results["ingest"] = {"omendb": omen, "raw": raw, "double_write": double, "raw_passes": raw_passes,
                             "double_write_passes": double_passes, "omendb_passes": omen_passes, "warmup": warmup,
                             "ratio": omen["rows_per_s"] / raw["rows_per_s"],
                             "ratio_with_close": omen["rows_per_s_with_close"] / raw["rows_per_s"],
                             "double_write_vs_raw": double["rows_per_s"] / raw["rows_per_s"],
                             "ratio_vs_double_write": omen["rows_per_s"] / double["rows_per_s"]}
        print(f"    omendb {omen['rows_per_s']:,.0f} rows/s, raw {raw['rows_per_s']:,.0f} rows/s, "
              f"ratio {results['ingest']['ratio']:.2f}; double-write reference {double['rows_per_s']:,.0f} rows/s "
              f"({results['ingest']['double_write_vs_raw']:.2f}x raw), omendb at "
              f"{results['ingest']['ratio_vs_double_write']:.2f}x of it", flush=True)

        # 4. RSS in a fresh process (before this process maps the table: page cache is warm either way)
        print("4/5 RSS of a fresh process ...", flush=True)
        results["rss"] = bench_rss(db_dir, Q, args.rows, dim, kwargs)
        rss, pre = results["rss"], results["rss"]["pandas_preimported"]
        print(f"    RssAnon delta after open {rss['after_open_delta']['rss_anon_mib']:.1f} MiB, "
              f"after first search {rss['after_first_search_delta']['rss_anon_mib']:.1f} MiB "
              f"({pre['after_first_search_delta']['rss_anon_mib']:.1f} MiB with pandas pre-imported; "
              f"vectors {rss['vector_mib']:.1f} MiB)", flush=True)

        # 2./3. search on the reopened table
        db = omendb.open(db_dir, **kwargs)
        tbl = db.open_table(TABLE)
        if tbl.count() != args.rows:
            raise RuntimeError(f"reopened table has {tbl.count()} rows, expected {args.rows}")
        t0 = now_ns()
        tbl.search(Q[0], k=K, exact=True)
        first_ms = (now_ns() - t0) / 1e6
        print("2/5 single-query search ...", flush=True)
        single = bench_single(tbl, X, Q[:args.single_queries], K, args.warmup)
        single["first_search_after_reopen_ms"] = first_ms
        results["single"] = single
        print(f"    p50 omendb {single['omendb']['p50_ms']:.3f} ms, numpy {single['numpy']['p50_ms']:.3f} ms, "
              f"ratio {single['ratio_p50']:.2f}", flush=True)
        print("3/5 batch search ...", flush=True)
        batch, omen_ids, np_ids = bench_batch(tbl, X, Q[:args.batch_queries], K, args.batch_repeats)
        results["batch"] = batch
        print(f"    omendb {batch['omendb']['median_s']:.3f} s, numpy plain {batch['numpy_plain']['median_s']:.3f} s, "
              f"chunked {batch['numpy_chunked']['median_s']:.3f} s, ratio {batch['ratio_vs_best_numpy']:.2f}",
              flush=True)
        results["table_stats"] = tbl.stats()
        results["index_builder_threads_after_search"] = builder_threads()
        db.close()

        # 5. recall
        print("5/5 recall@10 ...", flush=True)
        results["recall"] = bench_recall(data, query_ids[:args.batch_queries], args.rows, total_rows,
                                         omen_ids, np_ids, K)
        print(f"    recall@10 omendb {results['recall']['recall_omendb']:.4f} ({results['recall']['truth']})",
              flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results["wall_seconds"] = time.perf_counter() - started
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    text = write_report(args.out / args.name, results, markdown, indent=2)
    print()
    print(text)
    print(f"wrote {args.out / args.name}.json and {args.out / args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
