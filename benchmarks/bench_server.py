#!/usr/bin/env python
"""Server benchmark: ``omendb serve`` (Arrow Flight + HTTP JSON) next to the embedded API, in one run.

Measures, on the pypi-minilm-100k dataset (100,000 x 384 unit vectors, cosine), k=10,
with the server started as a subprocess of this script
(``python -m omendb.server PATH --host 127.0.0.1 --port P --http-port H``, free loopback
ports, ready when it prints "omendb serving") and stopped with SIGTERM at the end:

1. single-query latency p50/p99 of the same table three ways, interleaved query by query
   (the order rotates, so load drift on a shared machine hits all three alike):
   (a) embedded ``tbl.search(q, k=10, columns=...)`` on a COPY of the database folder
   opened in this process, (b) Flight: ``omendb.connect("127.0.0.1:P").open_table(..)
   .search(...)`` (one connection), (c) HTTP: ``POST /tables/pypi/search`` with a JSON
   body over one persistent ``http.client`` keep-alive connection (JSON encode/decode
   included). The table: cosine, every row in ONE segment, ``HnswConfig(m=16,
   ef_construction=200, min_rows=1000)``, flushed and indexed (``wait_for_index``)
   before the copy is taken and the server starts. Two payloads: ids only, and
   id + name + summary. Target: Flight p50 <= embedded p50 + 1 ms.
2. durable ingest: the same 1,000-row float32 Arrow batches added to a fresh table
   through the Flight client (``RemoteTable.add``; the server runs with fsync=True)
   and embedded (``omendb.open(path)``, fsync=True, same default options as the
   server), in rounds of alternating order. Target: Flight rows/s >= 70% of embedded.
3. a bounded loopback load test: W client threads (``--load-mode processes``: processes)
   x S seconds (default 8 x 30 s; ``--quick`` 4 x 5 s), each with its own Flight
   connection, issuing a random mix of 90% ``search(q, k=10, columns=['id'])`` and 10%
   ``add`` of ``--load-add-rows`` new rows to the searched table; every call has a 30 s
   timeout and each worker stops at its deadline or after ``--load-max-ops``. Reports
   throughput, p50/p99 per operation, errors (target 0), CPU used by the server and the
   client, and checks that the table holds exactly the acknowledged rows afterwards.
Last, the server gets SIGTERM: time to exit, exit code, and the folder reopened
embedded must hold every acknowledged row with nothing left in the WAL to replay.

Results: benchmarks/results/server.json and server.md (``--quick``: server-quick.*).

    python benchmarks/bench_server.py            # full: 100K rows, 1,000 queries, 8 x 30 s; run it alone
    python benchmarks/bench_server.py --quick    # 20K rows, 200 queries, 4 x 5 s: a sanity check
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _harness import (THREAD_ENV, WARMUP, Run, add_run_args, alternating_rounds, dataset_schema, f2, f3,
                      float32_table, lat_summary, load_dataset, machine_info, machine_section, now_ns,
                      package_version, parser, run_defaults, time_interleaved, title, yes)

TABLE = "pypi"
K = 10
M = 16
EF_CONSTRUCTION = 200
ADD_BATCH = 1_000
#: payload variants of part 1: (label, columns)
PAYLOADS = (("id", ["id"]), ("id,name,summary", ["id", "name", "summary"]))
LATENCY_TARGET_MS = 1.0
INGEST_TARGET = 0.70
CALL_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


# ============================================================================ helpers
def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def machine(workdir: Path) -> dict:
    import psutil

    return machine_info(workdir, lambda: {"faiss": package_version("faiss"), "fastapi": package_version("fastapi"),
                                          "uvicorn": package_version("uvicorn"), "psutil": psutil.__version__},
                        env=THREAD_ENV + ("OMP_WAIT_POLICY",), pools=True)


# ============================================================================ the server subprocess
class ServerProcess:
    """``python -m omendb.server PATH`` on free loopback ports; stdout watched for its announcements."""

    def __init__(self, path: Path, workdir: Path, token: str | None, extra_env: dict | None = None) -> None:
        self.port, self.http_port = free_ports(2)
        self.cmd = [sys.executable, "-m", "omendb.server", str(path), "--host", "127.0.0.1",
                    "--port", str(self.port), "--http-port", str(self.http_port)]
        shown = self.cmd + (["--token", "***"] if token else [])
        if token:
            self.cmd += ["--token", token]
        self.command = " ".join(shlex.quote(c) for c in shown)
        self.log_path = workdir / "server.stderr.log"
        self._log = open(self.log_path, "w")
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.extra_env = dict(extra_env or {})
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        if self.extra_env:
            self.command = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.extra_env.items()) + " " + self.command
        print(f"$ {self.command}", flush=True)
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
                                     cwd=str(workdir))
        self._reader = threading.Thread(target=self._read, name="server-stdout", daemon=True)
        self._reader.start()
        self.ready_s: float | None = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("omendb serving"):
                self._ready.set()

    @property
    def flight_uri(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        deadline = time.perf_counter() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} before serving; "
                                   f"stderr: {self.stderr_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"server not ready after {timeout:.0f} s; stderr: {self.stderr_tail()}")
        self.ready_s = time.perf_counter() - self.t_start
        return self.ready_s

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            self._log.flush()
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> dict:
        """SIGTERM, wait up to ``timeout``; SIGKILL (reported) if it does not exit."""
        out: dict = {"signal": "SIGTERM"}
        if self.proc.poll() is not None:
            out.update(already_exited=True, exit_code=self.proc.returncode)
        else:
            t0 = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                out.update(stopped=True, stop_s=time.perf_counter() - t0, exit_code=self.proc.returncode)
            except subprocess.TimeoutExpired:
                out.update(stopped=False, stop_s=None, error=f"still running {timeout:.0f} s after SIGTERM; killed")
                self.proc.kill()
                self.proc.wait(30)
                out["exit_code"] = self.proc.returncode
        self._reader.join(5)
        self._log.close()
        out["stdout"] = list(self.lines)
        out["stopped_line_seen"] = any(line.startswith("omendb server stopped") for line in self.lines)
        err = self.log_path.read_text() if self.log_path.exists() else ""
        out["stderr_tail"] = err[-4000:]
        return out


# ============================================================================ part 0: the searched table
def build_search_db(path: Path, data, batch: int = 10_000) -> dict:
    """Every row in ONE indexed segment (fsync off, 1 GiB memtable: a build, not the measured ingest)."""
    import omendb

    shutil.rmtree(path, ignore_errors=True)
    config = omendb.HnswConfig(m=M, ef_construction=EF_CONSTRUCTION, min_rows=1000)
    t0 = time.perf_counter()
    with omendb.open(path, fsync=False, memtable_bytes=1 << 30, compaction=False) as db:
        tbl = db.create_table(TABLE, schema=data.schema, metric="cosine", index=config)
        for s in range(0, data.num_rows, batch):
            tbl.add(data.slice(s, batch))
        tbl.flush()
        t1 = time.perf_counter()
        ok = tbl.wait_for_index()
        t2 = time.perf_counter()
        stats = tbl.stats()
    return {"ingest_flush_s": t1 - t0, "build_s": t2 - t1, "wait_ok": bool(ok), "config": config.to_dict(),
            "stats": stats}


# ============================================================================ part 1: latency
class HttpSearch:
    """POST /tables/{name}/search over one persistent keep-alive connection."""

    def __init__(self, port: int, table: str, token: str | None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT_S)
        self.path = f"/tables/{table}/search"
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.connects = 0

    def __call__(self, q: np.ndarray, columns: list[str]) -> list[dict]:
        body = json.dumps({"vector": q.tolist(), "k": K, "columns": columns}).encode()
        if self.conn.sock is None:
            self.connects += 1
        self.conn.request("POST", self.path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data)["results"]

    def close(self) -> None:
        self.conn.close()


def bench_latency(emb_tbl, rem_tbl, http_search: HttpSearch, Q: np.ndarray) -> list[dict]:
    """Per payload: embedded / Flight / HTTP single queries, interleaved query by query."""
    out = []
    for label, columns in PAYLOADS:
        modes = {
            "embedded": lambda q, c=columns: emb_tbl.search(q, k=K, columns=c),
            "flight": lambda q, c=columns: rem_tbl.search(q, k=K, columns=c),
            "http": lambda q, c=columns: http_search(q, c),
        }
        results, lat = time_interleaved(modes, Q)
        ids = {"embedded": [r["id"].to_pylist() for r in results["embedded"]],
               "flight": [r["id"].to_pylist() for r in results["flight"]],
               "http": [[row["id"] for row in r] for r in results["http"]]}
        row = {"payload": label, "columns": columns}
        for name in modes:
            row[name] = lat_summary(lat[name])
        for name in ("flight", "http"):
            row[name]["same_ids_as_embedded"] = float(np.mean([a == b for a, b in zip(ids[name], ids["embedded"])]))
            row[name]["p50_overhead_ms"] = row[name]["p50_ms"] - row["embedded"]["p50_ms"]
            row[name]["p99_overhead_ms"] = row[name]["p99_ms"] - row["embedded"]["p99_ms"]
        row["short_results"] = {name: int(sum(len(x) < K for x in ids[name])) for name in modes}
        out.append(row)
        print(f"  payload {label:16s} p50/p99 ms: embedded {row['embedded']['p50_ms']:.3f}/"
              f"{row['embedded']['p99_ms']:.3f}  flight {row['flight']['p50_ms']:.3f}/{row['flight']['p99_ms']:.3f}"
              f"  http {row['http']['p50_ms']:.3f}/{row['http']['p99_ms']:.3f}  (same ids: flight "
              f"{row['flight']['same_ids_as_embedded']:.3f}, http {row['http']['same_ids_as_embedded']:.3f})",
              flush=True)
    return out


# ============================================================================ part 2: ingest
def ingest_batches(data, batch: int = ADD_BATCH) -> list:
    return [data.slice(s, batch) for s in range(0, data.num_rows, batch)]


def time_adds(tbl, batches) -> dict:
    lat = np.empty(len(batches), dtype=np.int64)
    rows = 0
    t0 = now_ns()
    for i, b in enumerate(batches):
        t = now_ns()
        rows += tbl.add(b)
        lat[i] = now_ns() - t
    total = (now_ns() - t0) / 1e9
    return {"rows": rows, "seconds": total, "rows_per_s": rows / total, "batch": lat_summary(lat)}


def ingest_embedded(path: Path, schema, batches) -> dict:
    import omendb

    shutil.rmtree(path, ignore_errors=True)
    db = omendb.open(path)  # the server's options: fsync=True, 64 MiB memtable, builder + compaction on
    try:
        tbl = db.create_table("ingest", schema=schema, metric="cosine")
        res = time_adds(tbl, batches)
        res["count"] = tbl.count()
        res["segments"] = tbl.stats()["segments"]
        tbl.wait_for_index()  # untimed: no build of this run races the next one
    finally:
        db.close()
    shutil.rmtree(path, ignore_errors=True)
    return res


def ingest_flight(rdb, name: str, schema, batches) -> dict:
    tbl = rdb.create_table(name, schema=schema, metric="cosine")
    res = time_adds(tbl, batches)
    res["count"] = tbl.count()
    res["segments"] = tbl.stats()["segments"]
    while not tbl.wait_for_index(timeout=CALL_TIMEOUT_S / 2):  # each call within the client's deadline
        pass
    rdb.drop_table(name)
    return res


def bench_ingest(rdb, workdir: Path, data, rounds: int) -> dict:
    batches = ingest_batches(data)
    def reported(side: str, run):
        def timed(r: int) -> dict:
            res = run(r)
            print(f"  round {r + 1} {side:8s}: {res['rows_per_s']:,.0f} rows/s "
                  f"(batch p50 {res['batch']['p50_ms']:.2f} ms, p99 {res['batch']['p99_ms']:.2f} ms; "
                  f"count {res['count']:,})", flush=True)
            return res
        return timed

    out: dict = {"rounds": alternating_rounds({
        "embedded": reported("embedded", lambda r: ingest_embedded(workdir / "ingest-embedded", data.schema, batches)),
        "flight": reported("flight", lambda r: ingest_flight(rdb, f"ingest_{r + 1}", data.schema, batches)),
    }, rounds, reverse_odd=True), "batch_rows": ADD_BATCH, "rows": data.num_rows}
    for row in out["rounds"]:
        row["ratio"] = row["flight"]["rows_per_s"] / row["embedded"]["rows_per_s"]
    for side in ("embedded", "flight"):
        rows = sum(r[side]["rows"] for r in out["rounds"])
        secs = sum(r[side]["seconds"] for r in out["rounds"])
        out[side] = {"rows_per_s": rows / secs, "seconds": secs, "rows": rows,
                     "counts_ok": all(r[side]["count"] == data.num_rows for r in out["rounds"])}
    out["ratio"] = out["flight"]["rows_per_s"] / out["embedded"]["rows_per_s"]
    return out


# ============================================================================ part 3: load test
def load_worker(spec: dict, Q: np.ndarray, pool) -> dict:
    """One client: its own Flight connection, a random 90/10 search/add mix until its deadline."""
    import pyarrow as pa
    import omendb

    rng = np.random.default_rng(spec["seed"])
    search_lat, add_lat = [], []
    errors: list[str] = []
    n_errors = 0
    added_rows = 0
    next_id = spec["id_base"]
    add_rows = spec["add_rows"]
    ops = 0
    try:
        db = omendb.connect(spec["uri"], token=spec.get("token"), timeout=CALL_TIMEOUT_S)
        tbl = db.open_table(spec["table"])
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return {"errors": 1, "error_samples": [f"connect: {type(exc).__name__}: {exc}"], "ops": 0,
                "searches": 0, "adds": 0, "added_rows": 0, "search_lat_ns": [], "add_lat_ns": [], "elapsed_s": 0.0}
    delay = spec["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    t_begin = time.perf_counter()
    end = t_begin + spec["seconds"]
    while ops < spec["max_ops"]:
        if time.perf_counter() >= end:
            break
        is_add = rng.random() < spec["add_fraction"]
        try:
            if is_add:
                off = int(rng.integers(0, pool.num_rows - add_rows + 1))
                batch = pool.slice(off, add_rows)
                batch = batch.set_column(0, "id", pa.array(np.arange(next_id, next_id + add_rows, dtype=np.int64)))
                next_id += add_rows
                t0 = now_ns()
                n = tbl.add(batch)
                add_lat.append(now_ns() - t0)
                added_rows += n
            else:
                q = Q[int(rng.integers(0, len(Q)))]
                t0 = now_ns()
                r = tbl.search(q, k=K, columns=["id"])
                search_lat.append(now_ns() - t0)
                if r.num_rows != K:
                    raise RuntimeError(f"search returned {r.num_rows} rows, expected {K}")
        except Exception as exc:  # noqa: BLE001 - counted and sampled
            n_errors += 1
            if len(errors) < 5:
                errors.append(f"{'add' if is_add else 'search'}: {type(exc).__name__}: {exc}"[:500])
        ops += 1
    elapsed = time.perf_counter() - t_begin
    try:
        db.close()
    except Exception:
        pass
    return {"ops": ops, "searches": len(search_lat), "adds": len(add_lat), "added_rows": added_rows,
            "errors": n_errors, "error_samples": errors, "elapsed_s": elapsed,
            "search_lat_ns": search_lat, "add_lat_ns": add_lat}


def load_worker_role(args) -> None:
    """Subprocess worker (``--load-mode processes``)."""
    import pyarrow as pa

    spec = json.loads(Path(args.spec).read_text())
    workdir = Path(spec["workdir"])
    Q = np.load(workdir / "load-queries.npy")
    with pa.memory_map(str(workdir / "load-pool.arrow")) as src:
        pool = pa.ipc.open_file(src).read_all()
    res = load_worker(spec, Q, pool)
    Path(args.result).write_text(json.dumps(res))


def bench_load(server: ServerProcess, token: str | None, Q: np.ndarray, pool, workdir: Path, args,
               expected_before: int) -> dict:
    import psutil
    import pyarrow as pa
    import omendb

    sproc = psutil.Process(server.proc.pid)
    # every client starts at the same moment (processes first import omendb: give them longer)
    start_at = time.time() + (2.0 if args.load_mode == "threads" else 8.0)
    specs = [{"uri": server.flight_uri, "token": token, "table": TABLE, "seed": 1000 + w,
              "id_base": 1_000_000_000 * (w + 1), "add_rows": args.load_add_rows, "add_fraction": 0.1,
              "seconds": args.load_seconds, "max_ops": args.load_max_ops, "start_at": start_at,
              "workdir": str(workdir)} for w in range(args.load_workers)]
    results: list[dict | None] = [None] * len(specs)
    hung = 0
    cpu_server0 = sproc.cpu_times()
    rss_server0 = sproc.memory_info().rss
    ru_self0 = resource.getrusage(resource.RUSAGE_SELF)
    ru_children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    join_timeout = args.load_seconds + CALL_TIMEOUT_S + 30
    if args.load_mode == "threads":
        def run(i: int) -> None:
            results[i] = load_worker(specs[i], Q, pool)

        threads = [threading.Thread(target=run, args=(i,), name=f"load-{i}", daemon=True) for i in range(len(specs))]
        for t in threads:
            t.start()
        wall0 = time.time()
        for t in threads:
            t.join(max(0.0, start_at + join_timeout - time.time()))
        wall1 = time.time()
        hung = sum(t.is_alive() for t in threads)
    else:
        np.save(workdir / "load-queries.npy", Q)
        with pa.OSFile(str(workdir / "load-pool.arrow"), "wb") as sink:
            with pa.ipc.new_file(sink, pool.schema) as writer:
                writer.write_table(pool)
        procs = []
        for i, spec in enumerate(specs):
            spec_path, result_path = workdir / f"load-spec-{i}.json", workdir / f"load-result-{i}.json"
            result_path.unlink(missing_ok=True)
            spec_path.write_text(json.dumps(spec))
            procs.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--role", "load-worker",
                                            "--spec", str(spec_path), "--result", str(result_path)]), result_path))
        wall0 = time.time()
        for i, (p, result_path) in enumerate(procs):
            try:
                p.wait(max(1.0, start_at + join_timeout - time.time()))
            except subprocess.TimeoutExpired:
                hung += 1
                p.kill()
                p.wait()
            if result_path.exists():
                results[i] = json.loads(result_path.read_text())
        wall1 = time.time()
    cpu_server1 = sproc.cpu_times()
    ru_self1 = resource.getrusage(resource.RUSAGE_SELF)
    ru_children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    window = max(1e-9, min(wall1, start_at + args.load_seconds) - max(wall0, start_at))
    done = [r for r in results if r is not None]
    search_lat = np.concatenate([np.asarray(r["search_lat_ns"], dtype=np.int64) for r in done] or [np.empty(0)])
    add_lat = np.concatenate([np.asarray(r["add_lat_ns"], dtype=np.int64) for r in done] or [np.empty(0)])
    elapsed = max((r["elapsed_s"] for r in done), default=0.0)
    ops = sum(r["ops"] for r in done)
    n_err = sum(r["errors"] for r in done) + hung + (len(results) - len(done))
    added = sum(r["added_rows"] for r in done)
    if args.load_mode == "threads":
        client_cpu = (ru_self1.ru_utime - ru_self0.ru_utime) + (ru_self1.ru_stime - ru_self0.ru_stime)
    else:
        client_cpu = (ru_children1.ru_utime - ru_children0.ru_utime) + (ru_children1.ru_stime - ru_children0.ru_stime)
    server_cpu = (cpu_server1.user - cpu_server0.user) + (cpu_server1.system - cpu_server0.system)
    out = {
        "mode": args.load_mode, "workers": len(specs), "seconds": args.load_seconds, "max_ops_per_worker": args.load_max_ops,
        "add_fraction": 0.1, "add_rows": args.load_add_rows, "elapsed_s": elapsed,
        "ops": ops, "ops_per_s": ops / elapsed if elapsed else None,
        "searches": int(search_lat.size), "searches_per_s": search_lat.size / elapsed if elapsed else None,
        "adds": int(add_lat.size), "added_rows": added, "rows_added_per_s": added / elapsed if elapsed else None,
        "search": lat_summary(search_lat), "add": lat_summary(add_lat),
        "errors": n_err, "hung_workers": hung, "missing_results": len(results) - len(done),
        "error_samples": [e for r in done for e in r["error_samples"]][:10],
        "per_worker_ops": [r["ops"] for r in done],
        "server_cpu_s": server_cpu, "server_cores_used": server_cpu / elapsed if elapsed else None,
        "client_cpu_s": client_cpu, "client_cores_used": client_cpu / elapsed if elapsed else None,
        "server_rss_mib_before": rss_server0 / (1 << 20), "server_rss_mib_after": sproc.memory_info().rss / (1 << 20),
        "window_s": window,
    }
    # the table must hold exactly the acknowledged rows
    try:
        with omendb.connect(server.flight_uri, token=token, timeout=CALL_TIMEOUT_S) as rdb:
            rt = rdb.open_table(TABLE)
            out["count_after"] = rt.count()
            out["stats_after"] = rt.stats()
    except Exception as exc:  # noqa: BLE001
        out["count_after"] = None
        out["count_error"] = f"{type(exc).__name__}: {exc}"
    out["expected_count"] = expected_before + added
    out["count_ok"] = out["count_after"] == out["expected_count"]
    return out


# ============================================================================ main
def parse_args(argv=None):
    p = parser(__doc__)
    add_run_args(p, "server", quick="20K rows, 200 queries, 4 x 5 s load: a sanity check",
                 queries="single queries timed per mode and payload (default 1,000; --quick 200)")
    p.add_argument("--ingest-rounds", type=int, default=2,
                   help="ingest rounds, order alternating embedded/flight (default %(default)s)")
    p.add_argument("--load-workers", type=int, help="load-test clients (default 8; --quick 4)")
    p.add_argument("--load-seconds", type=float, help="load-test duration per client (default 30; --quick 5)")
    p.add_argument("--load-mode", choices=["threads", "processes"], default="threads",
                   help="clients as threads of this process or as separate processes (default %(default)s)")
    p.add_argument("--load-add-rows", type=int, default=100, help="rows per load-test add (default %(default)s)")
    p.add_argument("--load-max-ops", type=int, default=200_000, help="cap on calls per client (default %(default)s)")
    p.add_argument("--token", action="store_true", help="run the server with a random --token (auth on every call)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable for the server process only, e.g. OPENBLAS_NUM_THREADS=1 "
                        "(repeatable; recorded in the results)")
    p.add_argument("--role", choices=["main", "load-worker"], default="main", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    run_defaults(args)
    if args.load_workers is None:
        args.load_workers = 4 if args.quick else 8
    if args.load_seconds is None:
        args.load_seconds = 5.0 if args.quick else 30.0
    if args.queries <= WARMUP:
        p.error(f"--queries must be > {WARMUP}")
    if any("=" not in kv for kv in args.server_env):
        p.error("--server-env takes KEY=VALUE")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role == "load-worker":
        load_worker_role(args)
        return 0
    with Run(args, "server", machine, skip_args=("role", "spec", "result")) as run:
        run_server_parts(args, run)
    return 0


def run_server_parts(args, run: Run) -> None:
    import omendb

    res, workdir = run.res, run.workdir
    token = os.urandom(16).hex() if args.token else None
    server = None
    emb_db = None
    try:
        print(f"loading {args.rows:,} rows, {args.queries:,} queries from {args.data}", flush=True)
        base, X, Q, dim, _ = load_dataset(args.data, args.rows, args.queries)
        data = float32_table(base, X, dataset_schema(dim))
        del base
        res["dim"] = dim

        # ---- the searched table: one indexed segment, then an identical copy for the embedded side
        served, copy = workdir / "served", workdir / "embedded-copy"
        print("building the searched table (one segment, HNSW)", flush=True)
        res["build"] = build_search_db(served, data)
        print(f"  ingest+flush {res['build']['ingest_flush_s']:.2f} s, index build {res['build']['build_s']:.2f} s, "
              f"{res['build']['stats']['segments']} segment(s), {res['build']['stats']['indexed_segments']} indexed",
              flush=True)
        shutil.copytree(served, copy)

        # ---- server up
        server = ServerProcess(served, workdir, token, dict(kv.split("=", 1) for kv in args.server_env))
        res["server"] = {"command": server.command, "ready_s": server.wait_ready()}
        print(f"  server ready in {res['server']['ready_s']:.2f} s: {server.lines[-1]}", flush=True)
        rdb = omendb.connect(server.flight_uri, token=token, timeout=CALL_TIMEOUT_S)
        rem_tbl = rdb.open_table(TABLE)
        res["server"]["remote_stats"] = rem_tbl.stats()
        emb_db = omendb.open(copy)
        emb_tbl = emb_db.open_table(TABLE)
        res["embedded_stats"] = emb_tbl.stats()
        hs = HttpSearch(server.http_port, TABLE, token)

        # ---- 1. latency
        print(f"1. single-query latency: embedded vs Flight vs HTTP ({args.queries} queries each, interleaved)",
              flush=True)
        res["latency"] = bench_latency(emb_tbl, rem_tbl, hs, Q)
        res["latency_http_connects"] = hs.connects
        hs.close()
        emb_db.close()
        emb_db = None
        shutil.rmtree(copy, ignore_errors=True)

        # ---- 2. ingest
        print(f"2. durable ingest of {args.rows:,} rows in {ADD_BATCH:,}-row batches: embedded vs Flight", flush=True)
        res["ingest"] = bench_ingest(rdb, workdir, data, args.ingest_rounds)
        print(f"  Flight / embedded: {res['ingest']['ratio']:.2f}", flush=True)

        # ---- 3. load test
        print(f"3. load test: {args.load_workers} {args.load_mode} x {args.load_seconds:g} s, 90% search / 10% add "
              f"({args.load_add_rows} rows) over Flight", flush=True)
        pool = data.slice(0, min(data.num_rows, 10_000))
        count_before = rem_tbl.count()
        res["load"] = bench_load(server, token, Q, pool, workdir, args, count_before)
        ld = res["load"]
        print(f"  {ld['ops_per_s']:,.0f} ops/s ({ld['searches_per_s']:,.0f} searches/s, {ld['rows_added_per_s']:,.0f} "
              f"rows added/s); search p50 {ld['search']['p50_ms']:.2f} ms p99 {ld['search']['p99_ms']:.2f} ms; add p50 "
              f"{ld['add']['p50_ms']:.2f} ms p99 {ld['add']['p99_ms']:.2f} ms; errors {ld['errors']}; "
              f"count {ld['count_after']} (expected {ld['expected_count']}); server {ld['server_cores_used']:.2f} "
              f"cores, client {ld['client_cores_used']:.2f} cores", flush=True)
        for e in ld["error_samples"]:
            print(f"    error: {e}", flush=True)
        rdb.close()

        # ---- stop + reopen
        print("stopping the server (SIGTERM)", flush=True)
        res["stop"] = server.stop()
        server = None
        st = res["stop"]
        print(f"  exit code {st.get('exit_code')}, "
              + (f"stopped in {st['stop_s']:.2f} s" if st.get("stop_s") is not None else f"**{st.get('error')}**"),
              flush=True)
        with omendb.open(served) as db:
            tbl = db.open_table(TABLE)
            s = tbl.stats()
            res["reopen"] = {"count": tbl.count(), "memtable_rows_replayed": s["memtable_rows"], "stats": s,
                             "tables": db.table_names()}
        res["reopen"]["count_ok"] = res["reopen"]["count"] == ld["count_after"]
        print(f"  reopened: {res['reopen']['count']:,} rows ({res['reopen']['memtable_rows_replayed']} replayed "
              f"from the WAL), tables {res['reopen']['tables']}", flush=True)

        # ---- summary
        lat_id = res["latency"][0]
        res["summary"] = {
            "flight_p50_overhead_ms": lat_id["flight"]["p50_overhead_ms"],
            "latency_ok": lat_id["flight"]["p50_overhead_ms"] <= LATENCY_TARGET_MS,
            "ingest_ratio": res["ingest"]["ratio"], "ingest_ok": res["ingest"]["ratio"] >= INGEST_TARGET,
            "load_errors": ld["errors"], "load_ok": ld["errors"] == 0 and bool(ld["count_ok"]),
            "stop_ok": bool(st.get("stopped")) and st.get("exit_code") == 0 and res["reopen"]["count_ok"]
            and res["reopen"]["memtable_rows_replayed"] == 0,
        }
        run.finish(markdown)
    finally:
        if emb_db is not None:
            emb_db.close()
        if server is not None:  # an error above: never leave the server running
            info = server.stop()
            print(f"server stopped after an error: exit code {info.get('exit_code')} {info.get('error', '')}",
                  flush=True)


# ============================================================================ report
def markdown(res: dict) -> str:
    a = res["args"]
    s = res["summary"]
    b = res["build"]
    L = title("omendb server benchmark", a["quick"], res["command"]) + [
         f"{a['rows']:,} rows x {res['dim']} dims (pypi-minilm-100k, float32), cosine, k={K}. Server: "
         f"`{res['server']['command']}` (a subprocess on loopback, started in {res['server']['ready_s']:.2f} s, "
         f"{'with' if a['token'] else 'without'} a bearer token).", ""]
    lat = res["latency"][0]
    ing, ld, st = res["ingest"], res["load"], res["stop"]
    L += ["## Targets", "",
          "| check | measured | target | met |", "| --- | ---: | ---: | :---: |",
          f"| Flight single-query p50 - embedded p50 (ids only) | {lat['flight']['p50_overhead_ms']:+.3f} ms "
          f"({f3(lat['flight']['p50_ms'])} vs {f3(lat['embedded']['p50_ms'])}) | <= +{LATENCY_TARGET_MS:g} ms | "
          f"{yes(s['latency_ok'])} |",
          f"| Flight durable ingest / embedded durable ingest | {ing['ratio']:.2f} "
          f"({ing['flight']['rows_per_s']:,.0f} vs {ing['embedded']['rows_per_s']:,.0f} rows/s) | >= {INGEST_TARGET:.2f} | "
          f"{yes(s['ingest_ok'])} |",
          f"| load test errors ({ld['workers']} {ld['mode']} x {ld['seconds']:g} s), rows acknowledged = rows in table "
          f"| {ld['errors']} errors, count {'ok' if ld['count_ok'] else '**mismatch**'} | 0 | {yes(s['load_ok'])} |",
          f"| SIGTERM: exits 0, every acknowledged row in the folder, nothing left to replay | "
          f"{'exit ' + str(st.get('exit_code')) + (' in ' + f2(st.get('stop_s')) + ' s' if st.get('stop_s') is not None else '')}"
          f", {res['reopen']['count']:,} rows, {res['reopen']['memtable_rows_replayed']} replayed | — | "
          f"{yes(s['stop_ok'])} |", ""]
    L += ["## 1. Single-query latency: embedded vs Flight vs HTTP", "",
          f"The table: one segment, `HnswConfig(m={M}, ef_construction={EF_CONSTRUCTION}, min_rows=1000)` "
          f"(built in {b['build_s']:.2f} s), default ef_search. {a['queries']:,} queries per mode and payload "
          f"({WARMUP} warm-up each), the three modes interleaved query by query in rotating order. Embedded = "
          "`tbl.search(q, k=10, columns=...)` on a copy of the folder opened in this process; Flight = the same call on "
          "`omendb.connect(...)` (one connection); HTTP = `POST /tables/pypi/search` with "
          "`{\"vector\": [...], \"k\": 10, \"columns\": [...]}` over one keep-alive `http.client` connection "
          f"({res.get('latency_http_connects', '?')} TCP connect(s)), JSON encode + decode included.", "",
          "| payload | embedded p50 | p99 | Flight p50 | p99 | +p50 | HTTP p50 | p99 | +p50 | same ids (Flight / HTTP) |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["latency"]:
        e, f, h = r["embedded"], r["flight"], r["http"]
        L.append(f"| {r['payload']} | {f3(e['p50_ms'])} | {f3(e['p99_ms'])} | {f3(f['p50_ms'])} | {f3(f['p99_ms'])} | "
                 f"{f['p50_overhead_ms']:+.3f} | {f3(h['p50_ms'])} | {f3(h['p99_ms'])} | {h['p50_overhead_ms']:+.3f} | "
                 f"{f['same_ids_as_embedded']:.3f} / {h['same_ids_as_embedded']:.3f} |")
    L += ["", "Milliseconds. +p50 = remote p50 - embedded p50. same ids = fraction of queries whose top-10 ids equal "
          "the embedded answer (same index file, so 1.000 is expected).", ""]
    L += ["## 2. Durable ingest: Flight vs embedded", "",
          f"{ing['rows']:,} rows per run as {ing['batch_rows']:,}-row float32 Arrow tables (the same objects on both "
          "sides), each `add` durable (WAL fsync) before it returns; a fresh table per run, default options "
          "(64 MiB memtable, background index builder and compaction on, as in the server); `wait_for_index` after "
          "each run, untimed, so no build overlaps the next run.", "",
          "| round | order | embedded rows/s | batch p50 / p99 ms | Flight rows/s | batch p50 / p99 ms | Flight / embedded |",
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(ing["rounds"], 1):
        e, f = r["embedded"], r["flight"]
        L.append(f"| {i} | {' then '.join(r['order'])} | {e['rows_per_s']:,.0f} | {f2(e['batch']['p50_ms'])} / "
                 f"{f2(e['batch']['p99_ms'])} | {f['rows_per_s']:,.0f} | {f2(f['batch']['p50_ms'])} / "
                 f"{f2(f['batch']['p99_ms'])} | {r['ratio']:.2f} |")
    L.append(f"| all | | {ing['embedded']['rows_per_s']:,.0f} | | {ing['flight']['rows_per_s']:,.0f} | | "
             f"{ing['ratio']:.2f} |")
    if not (ing["embedded"]["counts_ok"] and ing["flight"]["counts_ok"]):
        L += ["", "**A run's table did not hold exactly the rows added.**"]
    L += ["", "## 3. Loopback load test over Flight", "",
          f"{ld['workers']} clients ({ld['mode']}), each with its own `omendb.connect` and a {CALL_TIMEOUT_S:g} s call "
          f"timeout, for {ld['seconds']:g} s (or {ld['max_ops_per_worker']:,} calls): 90% `search(q, k=10, "
          f"columns=['id'])` of a random query, 10% `add` of {ld['add_rows']} new rows, all on the searched table "
          "(so searches also scan the growing memtable).", "",
          "| ops/s | searches/s | rows added/s | search p50 | search p99 | add p50 | add p99 | errors | "
          "server cores | client cores |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
          f"| {ld['ops_per_s']:,.0f} | {ld['searches_per_s']:,.0f} | {ld['rows_added_per_s']:,.0f} | "
          f"{f2(ld['search']['p50_ms'])} | {f2(ld['search']['p99_ms'])} | {f2(ld['add']['p50_ms'])} | "
          f"{f2(ld['add']['p99_ms'])} | {ld['errors']} | {f2(ld['server_cores_used'])} | {f2(ld['client_cores_used'])} |",
          "", f"Latencies in ms. {ld['ops']:,} calls ({ld['searches']:,} searches, {ld['adds']:,} adds = "
          f"{ld['added_rows']:,} rows) in {ld['elapsed_s']:.1f} s; calls per client {ld['per_worker_ops']}. "
          f"Table afterwards: {ld['count_after']} rows (expected {ld['expected_count']}: "
          f"{'ok' if ld['count_ok'] else '**mismatch**'}), "
          f"{ld.get('stats_after', {}).get('segments', '?')} segment(s), "
          f"{ld.get('stats_after', {}).get('memtable_rows', '?')} rows in the memtable. Server RSS "
          f"{ld['server_rss_mib_before']:.0f} -> {ld['server_rss_mib_after']:.0f} MiB. cores = CPU seconds / wall seconds "
          f"(the machine has {res['machine']['cpu_count']}).", ""]
    if ld["error_samples"]:
        L += ["Errors (first ones):", ""] + [f"- `{e}`" for e in ld["error_samples"]] + [""]
    if ld["hung_workers"]:
        L += [f"**{ld['hung_workers']} client(s) did not finish in time.**", ""]
    L += ["## Server stop", "",
          f"SIGTERM -> exit code {st.get('exit_code')}"
          + (f" after {st['stop_s']:.2f} s" if st.get("stop_s") is not None else f" (**{st.get('error')}**)")
          + f"; 'stopped' line printed: {st.get('stopped_line_seen')}. Reopened embedded: {res['reopen']['count']:,} "
          f"rows ({'= acknowledged' if res['reopen']['count_ok'] else '**differs from acknowledged**'}), "
          f"{res['reopen']['memtable_rows_replayed']} rows replayed from the WAL, tables {res['reopen']['tables']}.", ""]
    m = res["machine"]
    libraries = (f"Python {m['python']}, numpy {m['numpy']}, pyarrow {m['pyarrow']} (Flight), faiss {m['faiss']}, "
                 f"fastapi {m['fastapi']}, uvicorn {m['uvicorn']}, psutil {m['psutil']}")
    L += machine_section(m, res["wall_s"], libraries) + [""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
