"""The benchmark scripts' shared harness: timing, recall, ef sweeps, data, machine facts, reports.

Only the standard library and NumPy are imported here: bench_hnsw.py and bench_sql.py also run
under separate peer venvs (LanceDB / Chroma, DuckDB vss) without omendb, faiss or psutil, so
everything else is imported where it is used. Each script keeps only what it measures.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "pypi-minilm-100k"
RESULTS = REPO / "benchmarks" / "results"
#: BLAS / OpenMP thread variables every report records when they are set.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: untimed calls before every timed series of single queries
WARMUP = 20


# ============================================================================ timing
def now_ns() -> int:
    return time.perf_counter_ns()


def pct(samples_ns, q: float) -> float | None:
    """Percentile ``q`` of nanosecond samples, in milliseconds (None without samples)."""
    if len(samples_ns) == 0:
        return None
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q)) / 1e6


def lat_summary(lat_ns, *, brief: bool = False) -> dict:
    """p50 / p99 / mean in ms; unless ``brief`` also the sample count and the max."""
    lat = np.asarray(lat_ns, dtype=np.float64)
    if brief:
        return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "mean_ms": float(lat.mean()) / 1e6}
    return {"n": int(lat.size), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "mean_ms": float(lat.mean()) / 1e6 if lat.size else None,
            "max_ms": float(lat.max()) / 1e6 if lat.size else None}


def timed(run: Callable[[], Any]) -> tuple[int, Any]:
    """(nanoseconds ``run()`` took, its result)."""
    t0 = now_ns()
    result = run()
    return now_ns() - t0, result


def time_each(run: Callable[[Any], Any], items: Sequence, warmup: int = WARMUP, passes: int = 1):
    """Call ``run(item)`` for every item (``passes`` times over), timing each call alone.

    ``warmup`` untimed calls first; the collector is off while timing. ``run`` returns an
    opaque result: callers extract ids afterwards, so result conversion is not timed.
    Returns (results, latencies in ns as an int64 array).
    """
    for item in items[:warmup]:
        run(item)
    results, lat = [], np.empty(passes * len(items), dtype=np.int64)
    gc.collect()
    gc.disable()
    try:
        i = 0
        for _ in range(passes):
            for item in items:
                t0 = now_ns()
                r = run(item)
                lat[i] = now_ns() - t0
                results.append(r)
                i += 1
    finally:
        gc.enable()
    return results, lat


def time_interleaved(modes: dict[str, Callable[[Any], Any]], items: Sequence, warmup: int = WARMUP):
    """Every item through every mode, the order rotating item by item, so load drift on a shared
    machine hits all modes alike. Returns ({mode: results}, {mode: latencies in ns})."""
    names = list(modes)
    for item in items[:warmup]:
        for name in names:
            modes[name](item)
    lat = {name: np.empty(len(items), dtype=np.int64) for name in names}
    results: dict[str, list] = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for i, item in enumerate(items):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = now_ns()
                r = modes[name](item)
                lat[name][i] = now_ns() - t0
                results[name].append(r)
    finally:
        gc.enable()
    return results, lat


def time_repeated(run: Callable[[], Any], reps: int = 3, slow_s: float = 10.0):
    """Time ``run()``: the first call is a warm-up unless it took > ``slow_s`` (then it is the only
    one), else ``reps`` timed calls. Returns (last result, {"seconds": median, "min_s", "runs_s", "first_s"})."""
    gc.collect()
    t0 = now_ns()
    result = run()
    first = (now_ns() - t0) / 1e9
    runs = [first]
    if first <= slow_s:
        runs = []
        for _ in range(reps):
            gc.collect()
            t0 = now_ns()
            result = run()
            runs.append((now_ns() - t0) / 1e9)
    return result, {"seconds": float(np.median(runs)), "min_s": float(min(runs)), "runs_s": runs, "first_s": first}


def alternating_rounds(sides: dict[str, Callable[[int], Any]], rounds: int, *, reverse_odd: bool = False,
                       collect: bool = True) -> list[dict]:
    """Run every side once per round, ``sides(round)`` in their order (reversed in odd rounds when
    ``reverse_odd``), with ``gc.collect()`` before each when ``collect``: drift of the machine's
    speed falls on every side alike. Returns per round ``{"order": [...], side: result, ...}``."""
    out = []
    for r in range(rounds):
        order = list(sides)[::-1] if reverse_odd and r % 2 else list(sides)
        row: dict = {"order": order}
        for name in order:
            if collect:
                gc.collect()
            row[name] = sides[name](r)
        out.append(row)
    return out


# ============================================================================ recall and ef sweeps
def recall_at_k(found, truth, k: int = 10) -> float | None:
    """Mean |found[:k] & truth[:k]| / k over queries (found rows may be short or hold -1 padding)."""
    if len(truth) == 0:
        return None
    hits = 0
    for f, t in zip(found, truth):
        hits += len(set(int(x) for x in f[:k] if x >= 0) & set(int(x) for x in t[:k]))
    return hits / (k * len(truth))


def pad_ids(rows, k: int = 10) -> np.ndarray:
    """Id lists of varying length -> an (n, k) int64 array padded with -1."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.int64)[:k]
        out[i, :r.size] = r
    return out


def arrow_ids(results, k: int = 10) -> np.ndarray:
    """The "id" columns of Arrow search answers (omendb, LanceDB) as (n, k) ids padded with -1."""
    return pad_ids([r["id"].to_numpy() for r in results], k)


def exact_topk(X: np.ndarray, Q: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
               normalize: bool = False, block: int = 100) -> np.ndarray:
    """Exact top-k row positions by inner product (by cosine when ``normalize``), ties -> lower
    position, optionally among the ``allowed`` rows only."""
    if normalize:
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-30)
        Q = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-30)
    rows = np.arange(X.shape[0]) if allowed is None else np.flatnonzero(allowed)
    Xa = X if allowed is None else X[rows]
    kk = min(k, rows.size)
    out = np.empty((Q.shape[0], kk), dtype=np.int64)
    for s in range(0, Q.shape[0], block):
        scores = Q[s:s + block] @ Xa.T
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < rows.size else \
            np.broadcast_to(np.arange(rows.size), scores.shape)
        ps = np.take_along_axis(scores, part, axis=1)
        pid = rows[part]
        for i in range(part.shape[0]):
            out[s + i] = pid[i][np.lexsort((pid[i], -ps[i]))]  # score descending, then lower id
    return out


def read_gt(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """gt.parquet as (query ids, neighbour ids (n, 100))."""
    import pyarrow.parquet as pq

    g = pq.read_table(data / "gt.parquet")
    qid = g["query_id"].to_numpy()
    return qid, np.asarray(g["neighbors"].combine_chunks().flatten().to_numpy()).reshape(len(qid), -1)


def ground_truth(data: Path, X: np.ndarray, Q: np.ndarray, k: int, rows: int) -> tuple[np.ndarray, str]:
    """(top-k ids of every query, where they came from): gt.parquet for the full 100,000 rows,
    else brute-force NumPy over the subset."""
    if rows == 100_000 and (data / "gt.parquet").exists():
        qid, nb = read_gt(data)
        return (np.ascontiguousarray(nb[np.argsort(qid)][:len(Q), :k]),
                "gt.parquet (exact top-100 by cosine over all 100,000 rows)")
    t0 = time.time()
    gt = exact_topk(X, Q, k)
    return gt, f"exact top-10 by brute-force NumPy over the {rows:,}-row subset ({time.time() - t0:.1f} s)"


class Side(NamedTuple):
    """One system's single-query series at one setting: ``run(item)`` per item, ``ids(results)``
    -> (n, k) ids; ``short`` records "short_queries" (answers with -1 padding), ``extra(results)``
    adds keys of its own."""
    run: Callable[[Any], Any]
    items: Sequence
    ids: Callable[[list], np.ndarray]
    short: bool = False
    extra: Callable[[list], dict] | None = None


def measure(side: Side, truth: np.ndarray, k: int = 10, warmup: int = WARMUP) -> tuple[dict, np.ndarray]:
    """({"recall", "p50_ms", "p99_ms", "mean_ms", ...}, ids) of one side timed query by query."""
    results, lat = time_each(side.run, side.items, warmup)
    ids = side.ids(results)
    point = {"recall": recall_at_k(ids, truth, k), **lat_summary(lat, brief=True)}
    if side.extra is not None:
        point.update(side.extra(results))
    if side.short:
        point["short_queries"] = int((ids < 0).any(axis=1).sum())
    return point, ids


def ef_sweep(efs: Sequence, sides: dict[str, Callable[[Any], Side | None]], truth: np.ndarray, *,
             setup: Callable[[Any], None] | None = None,
             row: Callable[[Any, dict, dict], dict] | None = None, k: int = 10) -> list[dict]:
    """Per ef: ``setup(ef)``, then every side ``sides[name](ef)`` measured in order (None: not
    measured, recorded as None); ``row(ef, points, ids)`` builds the ef's record (and may time
    more), by default ``{"ef": ef, **points}``."""
    rows = []
    for ef in efs:
        if setup is not None:
            setup(ef)
        points: dict = {}
        ids: dict = {}
        for name, make in sides.items():
            side = make(ef)
            points[name], ids[name] = measure(side, truth, k) if side is not None else (None, None)
        rows.append(row(ef, points, ids) if row is not None else {"ef": ef, **points})
    return rows


def p50_at_recall(points: list[tuple[float, float]], target: float) -> float | None:
    """p50 where a recall/p50 curve (points in ef order) reaches ``target``: linear between the
    last point below it and the first at or above it (that point's p50 if it is the first).

    Comparing two systems here, rather than at one ef, compares what a user asking for a
    recall gets from each, whatever recall each system's graph gives at a given ef.
    """
    previous = None
    for recall, p50 in points:
        if recall >= target:
            if previous is None:
                return p50
            low_recall, low_p50 = previous
            return low_p50 + (p50 - low_p50) * (target - low_recall) / (recall - low_recall)
        previous = (recall, p50)
    return None


def fastest_at_recall(rows: list[dict], recall: float, point: Callable[[dict], dict] = lambda r: r,
                      slack: float = 0.0, key: str = "p50_ms"):
    """The row whose ``point(row)`` is fastest by ``key`` among those with recall >= ``recall - slack``."""
    ok = [r for r in rows if point(r).get("recall", 0) >= recall - slack]
    return min(ok, key=lambda r: point(r)[key]) if ok else None


# ============================================================================ data
def load_vectors(column, dim: int) -> np.ndarray:
    """An Arrow fixed-size-list column (float16 or float32) as a float32 (n, dim) array."""
    flat = column.combine_chunks().flatten()
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


class Dataset(NamedTuple):
    base: Any            #: base.parquet's first rows, vectors as stored (float16)
    X: np.ndarray        #: their vectors, float32
    Q: np.ndarray        #: the first queries, float32
    dim: int
    query_ids: np.ndarray


def load_dataset(data: Path, rows: int, n_queries: int, columns=None) -> Dataset:
    """The first ``rows`` base rows (``columns``, default all) and the first ``n_queries`` queries."""
    import pyarrow.parquet as pq

    base = pq.read_table(data / "base.parquet", columns=columns)
    if rows > base.num_rows:
        raise SystemExit(f"--rows {rows} > {base.num_rows} rows in {data / 'base.parquet'}")
    base = base.slice(0, rows).combine_chunks()
    dim = base.schema.field("vector").type.list_size
    queries = pq.read_table(data / "queries.parquet", columns=["id", "vector"])
    if n_queries > queries.num_rows:
        raise SystemExit(f"--queries {n_queries} > {queries.num_rows} rows in {data / 'queries.parquet'}")
    queries = queries.slice(0, n_queries)
    Q = np.ascontiguousarray(load_vectors(queries["vector"], dim))
    return Dataset(base, load_vectors(base["vector"], dim), Q, dim, queries["id"].to_numpy())


def float32_vectors(X: np.ndarray):
    """A ``fixed_size_list<float32, dim>`` Arrow array over ``X`` (no copy when X is float32)."""
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(X, dtype=np.float32).reshape(-1)),
                                             X.shape[1])


def dataset_schema(dim: int, *extra):
    """id (int64, not null), name, summary, ``extra`` fields, vector (float32 x dim, not null)."""
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string()),
                      pa.field("summary", pa.string()), *extra,
                      pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)])


def float32_table(base, X: np.ndarray, schema=None):
    """id / name / summary of ``base`` with ``X`` as the float32 vector column (sharing X's memory)."""
    import pyarrow as pa

    return pa.table({"id": base["id"], "name": base["name"], "summary": base["summary"],
                     "vector": float32_vectors(X)}, schema=schema)


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in Path(path).rglob(pattern) if p.is_file())


# ============================================================================ processes
def memory_mib(peak: bool = False) -> dict[str, float]:
    """RSS / RssAnon / RssFile (and VmHWM when ``peak``) of this process from /proc/self/status, MiB."""
    s: dict[str, int] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    s[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    mib = float(1 << 20)
    out = {"rss_mib": s.get("VmRSS", 0) / mib, "rss_anon_mib": s.get("RssAnon", 0) / mib,
           "rss_file_mib": s.get("RssFile", 0) / mib}
    if peak:
        out["peak_rss_mib"] = s.get("VmHWM", 0) / mib
    return out


def run_child(cmd: list[str], result: Path, env: dict | None = None, timeout: float = 6 * 3600) -> dict:
    """Run a role of a script in a subprocess; its JSON ``result`` file, or {"error": ...}."""
    result.unlink(missing_ok=True)
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not result.exists():
        return {"error": f"exit code {proc.returncode}"}
    return json.loads(result.read_text())


def venv_versions(python: str, packages: Sequence[str]) -> dict:
    """Installed versions of ``packages`` (and Python's) in another interpreter's environment."""
    code = ("import json, sys, importlib.metadata as m, platform\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    try: out[p] = m.version(p)\n"
            "    except Exception: out[p] = None\n"
            "out['python'] = platform.python_version(); print(json.dumps(out))")
    try:
        return json.loads(subprocess.run([python, "-c", code, *packages], capture_output=True, text=True,
                                         check=True).stdout)
    except Exception as exc:
        return {"error": str(exc)}


def thread_pools() -> list[dict]:
    """BLAS / OpenMP pools loaded in this process (threadpoolctl, when installed) and their thread counts."""
    try:
        import faiss  # noqa: F401  (loads its OpenMP runtime and BLAS)
        import threadpoolctl

        return [{k: info.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                for info in threadpoolctl.threadpool_info()]
    except Exception:
        return []


# ============================================================================ machine
def package_version(module: str) -> str | None:
    try:
        return getattr(__import__(module), "__version__", None)
    except Exception:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    path = str(Path(path).resolve())
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                mount, fstype = parts[1], parts[2]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


def git_revision(package_dir: Path, *watched: str) -> str:
    """Commit of the checkout holding ``package_dir``, with "+dirty(...)" when ``watched``
    folders of it (default: the package's own) have local changes."""
    root = Path(package_dir).resolve().parent
    watched = watched or (Path(package_dir).name,)
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *watched],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + (f"+dirty({' or '.join(w + '/' for w in watched)})" if dirty else "")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(workdir: Path, libraries: Callable[[], dict[str, Any]], *, env: Sequence[str] = THREAD_ENV,
                 watched: Sequence[str] = ("omendb",), host: bool = False, pools: bool = False) -> dict:
    """Date, CPU, cores, memory, load average at start, Python / numpy / pyarrow, ``libraries()``
    (name -> version; called after pyarrow and omendb are imported, so native libraries load in
    that order), omendb and its git revision, the work dir and its filesystem, the thread pools
    (``pools``) and those of the ``env`` variables that are set."""
    import pyarrow as pa
    import omendb

    try:
        import psutil

        memory = round(psutil.virtual_memory().total / (1 << 30), 1)
    except Exception:
        memory = None
    package = Path(omendb.__file__).resolve().parent
    info = {"date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if host:
        info["host"] = platform.node()
    info.update({
        "platform": platform.platform(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory, "loadavg_at_start": loadavg(),
        "python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__, **libraries(),
        "omendb": omendb.__version__, "omendb_git": git_revision(package, *watched), "omendb_path": str(package),
        "workdir": str(workdir), "workdir_fs": fs_type(workdir)})
    if pools:
        info["thread_pools"] = thread_pools()
    info["env"] = {k: os.environ[k] for k in env if k in os.environ}
    return info


def machine_section(m: dict, wall_s: float, libraries: str, extra: Sequence[str] = ()) -> list[str]:
    """The "## Machine" lines of a report: date and wall time, CPU, memory, load average at start
    and end, OS and work dir, ``libraries``, omendb, ``extra`` lines, thread pools, env."""
    lines = ["## Machine", "",
             f"- date (UTC): {m['date_utc']}; total wall time {wall_s:.0f} s",
             f"- CPU: {m['cpu_model']}, cpu_count {m['cpu_count']} (affinity {m['cpu_affinity']}), "
             f"RAM {m['memory_gib']} GiB, load average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end')}",
             f"- {m['platform']}; work dir {m['workdir']} ({m['workdir_fs']})",
             f"- {libraries}",
             f"- omendb {m['omendb']} ({m['omendb_git']}) from {m['omendb_path']}", *extra]
    if m.get("thread_pools"):
        lines.append("- thread pools: " + ", ".join(" ".join(x for x in (p["internal_api"], p.get("version"),
                                                                         f"x{p['num_threads']}") if x)
                                                    for p in m["thread_pools"]))
    if m.get("env"):
        lines.append(f"- env: {m['env']}")
    return lines


# ============================================================================ reports
def f2(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def f3(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def f4(x) -> str:
    return "—" if x is None else f"{x:.4f}"


def num(x, digits: int = 3) -> str:
    """``x`` with thousands separators and ``digits`` decimals ("—" for None)."""
    return "—" if x is None else f"{x:,.{digits}f}"


def mib(x) -> str:
    """Bytes as MiB with one decimal."""
    return "—" if x is None else f"{x / (1 << 20):,.1f}"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def md_table(headers: Sequence[str], align: str, rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table: ``align`` holds one letter per column (l, r or c)."""
    def line(cells) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    rule = {"l": "---", "r": "---:", "c": ":---:"}
    return [line(headers), line(rule[a] for a in align), *(line(r) for r in rows)]


def command_line() -> str:
    return " ".join(shlex.quote(c) for c in [sys.executable, *sys.argv])


def write_report(stem: Path, results: dict, markdown: Callable[[dict], str], indent: int = 1) -> str:
    """``<stem>.json`` (written first: a failing markdown still leaves the numbers) and ``<stem>.md``;
    returns the markdown."""
    Path(f"{stem}.json").write_text(json.dumps(results, indent=indent, default=str) + "\n")
    text = markdown(results)
    Path(f"{stem}.md").write_text(text)
    return text


def add_run_args(p, name: str, quick: str, queries: str) -> None:
    """--quick (help ``quick``), --rows, --queries (help ``queries``), --out, --workdir, --keep."""
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--rows", type=int, help="base rows to use (default 100,000; --quick 20,000)")
    p.add_argument("--queries", type=int, help=queries)
    p.add_argument("--out", type=Path, help=f"results path without suffix (default benchmarks/results/{name}, "
                   f"--quick: {name}-quick)")
    p.add_argument("--workdir", type=Path, help="where databases are written (default: a fresh temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")


def parser(doc: str):
    """An argument parser described by a script's docstring, with --data."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder (default: %(default)s)")
    return p


def run_defaults(args) -> None:
    """Defaults of :func:`add_run_args`' flags: 100,000 rows and 1,000 queries, --quick 20,000 and 200."""
    if args.rows is None:
        args.rows = 20_000 if args.quick else 100_000
    if args.queries is None:
        args.queries = 200 if args.quick else 1_000


class Run:
    """One run of a script writing ``<out>.json`` + ``<out>.md``: the command line and arguments,
    a work dir (a fresh temp dir unless --workdir; removed at the end unless --keep), machine
    facts taken at the start, and :meth:`finish` recording wall time and load average at the end.

        with Run(args, "hnsw", machine) as run:
            run.res["x"] = ...
            run.finish(markdown)
    """

    def __init__(self, args, name: str, machine: Callable[[Path], dict], skip_args: Sequence[str] = ()) -> None:
        self.wall0 = time.time()
        self.out: Path = args.out or (RESULTS / (f"{name}-quick" if args.quick else name))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.own_workdir = args.workdir is None
        self.keep = args.keep
        self.workdir: Path = Path(tempfile.mkdtemp(prefix=f"omendb-bench-{name}-")) if self.own_workdir \
            else args.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.res: dict = {"command": command_line(),
                          "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                   if k not in skip_args}}
        self.res["machine"] = machine(self.workdir)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        if self.own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def finish(self, markdown: Callable[[dict], str]) -> None:
        self.res["wall_s"] = time.time() - self.wall0
        self.res["machine"]["loadavg_at_end"] = loadavg()
        text = write_report(self.out.with_suffix(""), self.res, markdown)
        print(f"\nwrote {self.out.with_suffix('.json')} and {self.out.with_suffix('.md')}\n", flush=True)
        print(text)


def title(name: str, quick: bool, command: str) -> list[str]:
    """A report's first lines: its title (marked when quick) and the command that made it."""
    return [f"# {name}{' (--quick)' if quick else ''}", "", f"`{command}`", ""]
