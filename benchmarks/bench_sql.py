#!/usr/bin/env python
"""SQL benchmark: omendb's ``omen_knn`` DuckDB macro next to its Python API and DuckDB's vss extension.

Measures, on the pypi-minilm-100k dataset (100,000 x 384 unit vectors, cosine), k=10:

1. omendb single queries: a cosine table with every row in ONE segment
   (``omendb.open(path, fsync=False, memtable_bytes=1 GiB, compaction=False)``,
   ``HnswConfig(m=16, ef_construction=200, min_rows=1000)``, ``flush()``,
   ``wait_for_index()``); p50/p99 and recall@10 of
   (a) ``tbl.search(q, k=10, columns=['id'])`` and
   (b) ``db.sql("SELECT id, _distance FROM omen_knn('pypi', ?::FLOAT[384], 10)",
   params=[q.tolist()]).fetchall()``, at the table's default ef and over an ef sweep
   (``ef=`` / ``ef := n``). Target: SQL p50 - Python p50 <= 1 ms.
   A breakdown times the pieces of one SQL call (statement floor, binding the
   384-float parameter, the kNN UDF alone, ...) so any overhead can be attributed.
2. omendb batched: 1,000 query vectors in a DuckDB temp table, one statement
   ``SELECT q.id, k.id, k._distance FROM queries q, LATERAL omen_knn('pypi', q.vector, 10) k``:
   total seconds, queries/s, recall@10; next to ``tbl.search(Q, k=10)``.
3. DuckDB's vss extension (HNSW, usearch) on the same data, run with ``--vss-python``
   (a SEPARATE venv, see benchmarks/requirements-vss.txt; skipped without it) as a
   subprocess of this file: FLOAT[384] table, ``CREATE INDEX ... USING HNSW (vec) WITH
   (metric = 'cosine', M = 16, ef_construction = 200)``, build time; per
   ``SET hnsw_ef_search``: single-query p50/p99/recall of
   ``SELECT id FROM t ORDER BY array_cosine_distance(vec, ?::FLOAT[384]) LIMIT 10``
   (EXPLAIN must show HNSW_INDEX_SCAN) plus two other ways of passing the query
   (SQL literal; "by variable": ``SET VARIABLE qv = (SELECT vec FROM queries WHERE id = ?)``
   then ``getvariable('qv')``, which omendb is timed with too: DuckDB 1.5's Python client
   spends ~20 ms binding one 384-float list parameter, DuckDB 2's well under 1 ms), and the same
   batched LATERAL form (its plan recorded: DuckDB >= 1.3 rewrites a LATERAL top-k
   into an aggregate the vss optimizer does not match, i.e. an exact brute-force
   join, unless ``SET disabled_optimizers = 'top_n_window_elimination'``, which
   lets vss plan HNSW_INDEX_JOIN; both are timed).
   Target: omendb SQL p50 >= 3x faster than vss at >= equal recall@10.

Results: benchmarks/results/sql.json and sql.md (``--quick``: sql-quick.*).

    python benchmarks/bench_sql.py --vss-python /work/vssvenv/bin/python   # full; run it alone
    python benchmarks/bench_sql.py --quick --vss-python /work/vssvenv/bin/python  # 20K rows, 200 queries

Only numpy and pyarrow are imported at module level: the same file runs the vss part under
the vss venv's python (``--role vss``), where omendb (and DuckDB 2.x) are absent.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _harness import (WARMUP, Run, Side, add_run_args, arrow_ids, dataset_schema, ef_sweep, f3, f4,
                      fastest_at_recall, float32_vectors, ground_truth, lat_summary, load_dataset, machine_info,
                      machine_section, now_ns, package_version, pad_ids, parser, recall_at_k, run_child,
                      run_defaults, time_each, time_repeated, title, venv_versions)

TABLE = "pypi"
K = 10
M = 16
EF_CONSTRUCTION = 200
FULL_EFS = (16, 32, 64, 128, 256)
QUICK_EFS = (16, 32, 64, 128)
#: targets
SQL_OVERHEAD_TARGET_MS = 1.0
VSS_SPEEDUP_TARGET = 3.0
#: a batched run slower than this is timed once (no warm-up, no repeats)
SLOW_BATCH_S = 10.0
BATCH_REPS = 3

OMEN_SQL = "SELECT id, _distance FROM omen_knn('{t}', ?::FLOAT[{dim}], {k}{ef})"
OMEN_LATERAL = "SELECT q.id, k.id, k._distance FROM queries q, LATERAL omen_knn('{t}', q.vector, {k}{ef}) k"
OMEN_BY_ID = ("SELECT k.id, k._distance FROM (SELECT vector FROM queries WHERE id = ?) q, "
              "LATERAL omen_knn('{t}', q.vector, {k}) k")
VSS_SQL = "SELECT id FROM t ORDER BY array_cosine_distance(vec, ?::FLOAT[{dim}]) LIMIT {k}"
VSS_LITERAL = "SELECT id FROM t ORDER BY array_cosine_distance(vec, [{vec}]::FLOAT[{dim}]) LIMIT {k}"
VSS_LATERAL = ("SELECT q.id, k.id, k.d FROM queries q, LATERAL (SELECT t.id, array_cosine_distance(t.vec, q.vec) AS d "
               "FROM t ORDER BY d LIMIT {k}) k")
#: "by variable": the query vector goes from a temp table into a DuckDB variable (binding one integer),
#: then the kNN statement reads it -- no vector crosses the Python/DuckDB boundary (both sides alike)
SET_QV = "SET VARIABLE qv = (SELECT {col} FROM queries WHERE id = ?)"
VSS_BY_VAR = "SELECT id FROM t ORDER BY array_cosine_distance(vec, getvariable('qv')) LIMIT {k}"
OMEN_BY_VAR = "SELECT id, _distance FROM omen_knn('{t}', getvariable('qv'), {k})"
#: DuckDB optimizer whose rewrite (LATERAL top-k -> arg_min aggregate) hides the plan shape vss matches
TOPN_WINDOW_OPT = "top_n_window_elimination"


# ============================================================================ helpers (both venvs)
def row_ids(results) -> np.ndarray:
    """Ids of ``fetchall()`` answers (the id first in every row), padded to k with -1."""
    return pad_ids([[r[0] for r in x] for x in results])


def group_pairs(pairs, n_queries: int) -> tuple[np.ndarray, bool]:
    """(query id, row id, distance) triples in result order -> (ids (n, k), every query sorted by distance)."""
    per: list[list] = [[] for _ in range(n_queries)]
    for qid, rid, dist in pairs:
        per[int(qid)].append((dist, rid))
    ordered = all(all(a[0] <= b[0] for a, b in zip(p, p[1:])) for p in per)
    return pad_ids([[rid for _, rid in p] for p in per]), ordered


def time_batch(run):
    """``run()`` timed :data:`BATCH_REPS` times after a warm-up (once if slower than :data:`SLOW_BATCH_S`)."""
    return time_repeated(run, BATCH_REPS, SLOW_BATCH_S)


def plan_operators(plan_text: str) -> list[str]:
    """Physical operator names in an EXPLAIN rendering, top to bottom."""
    return re.findall(r"\b(HNSW_INDEX_[A-Z_]+|[A-Z][A-Z_]*(?:_JOIN|_SCAN|_BY|_PRODUCT)|WINDOW|TOP_N|UNNEST|"
                      r"ORDER_BY|FILTER|PROJECTION)\b", plan_text)


def explain(con, sql: str, params=None, analyze: bool = False) -> str:
    rows = con.execute(("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + sql, params).fetchall() if params is not None \
        else con.execute(("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + sql).fetchall()
    return "\n".join(str(r[-1]) for r in rows)


def vec_literal(q: np.ndarray) -> str:
    return ",".join(repr(float(x)) for x in q)


# ============================================================================ vss (vss venv)
def find_vss_extension() -> str:
    """The vss.duckdb_extension file shipped by the duckdb-extension-vss wheel of this interpreter."""
    import duckdb

    hits = []
    for site in sys.path:
        hits += glob.glob(os.path.join(site, "duckdb_extension_vss", "extensions", "**", "vss.duckdb_extension"),
                          recursive=True)
    if not hits:
        raise SystemExit("vss: no duckdb_extension_vss/**/vss.duckdb_extension under sys.path "
                         "(pip install duckdb-extension-vss==<duckdb version>)")
    want = f"v{duckdb.__version__}"
    hits.sort(key=lambda p: (want not in p, p))  # the build for this duckdb first
    return hits[0]


def vss_role(args) -> dict:
    import duckdb
    import pyarrow as pa

    workdir = Path(args.workdir)
    Q = np.load(workdir / "queries.npy")
    gt = np.load(workdir / "gt10.npy")
    n_q, dim = Q.shape
    t0 = time.time()
    base, X, _, dim2, _ = load_dataset(Path(args.data), args.rows, 1, columns=["id", "vector"])
    assert dim2 == dim
    out: dict = {"system": "duckdb-vss", "duckdb": duckdb.__version__, "python": platform.python_version(),
                 "numpy": np.__version__, "pyarrow": pa.__version__, "load_parquet_s": time.time() - t0}
    ext = find_vss_extension()
    out["extension_file"] = ext
    # install into the work dir, not ~/.duckdb; never download anything
    con = duckdb.connect(config={"extension_directory": str(workdir / "duckdb-extensions"),
                                 "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"INSTALL '{ext}'")
    con.execute("LOAD vss")
    out["vss_version"] = con.execute("SELECT extension_version FROM duckdb_extensions() "
                                     "WHERE extension_name = 'vss'").fetchall()[0][0]
    out["threads"] = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    # ---- table + index
    arrow_base = pa.table({"id": base["id"], "vector": float32_vectors(X)})
    arrow_q = pa.table({"id": pa.array(np.arange(n_q, dtype=np.int64)), "vector": float32_vectors(Q)})
    con.register("arrow_base", arrow_base)
    con.register("arrow_queries", arrow_q)
    t0 = now_ns()
    con.execute(f"CREATE TABLE t AS SELECT id, vector::FLOAT[{dim}] AS vec FROM arrow_base")
    out["table_load_s"] = (now_ns() - t0) / 1e9
    con.execute(f"CREATE TEMP TABLE queries AS SELECT id, vector::FLOAT[{dim}] AS vec FROM arrow_queries")
    con.unregister("arrow_base")
    con.unregister("arrow_queries")
    del arrow_base, base, X
    gc.collect()
    print(f"  vss: table of {args.rows:,} rows loaded in {out['table_load_s']:.2f} s; building HNSW", flush=True)
    t0 = now_ns()
    con.execute(f"CREATE INDEX t_hnsw ON t USING HNSW (vec) WITH (metric = 'cosine', M = {M}, "
                f"ef_construction = {EF_CONSTRUCTION})")
    out["build_s"] = (now_ns() - t0) / 1e9
    out["index"] = {"metric": "cosine", "M": M, "ef_construction": EF_CONSTRUCTION, "M0": 2 * M}
    try:
        out["index_info"] = [list(map(str, r)) for r in con.execute(
            "SELECT index_name, sql FROM duckdb_indexes()").fetchall()]
    except Exception:
        pass
    print(f"  vss: HNSW built in {out['build_s']:.2f} s ({out['threads']} DuckDB threads)", flush=True)

    sql = VSS_SQL.format(dim=dim, k=K)
    lateral = VSS_LATERAL.format(k=K)
    set_qv = SET_QV.format(col="vec")
    by_var = VSS_BY_VAR.format(k=K)
    plan = explain(con, sql, [Q[0].tolist()])
    out["plan_single"] = plan
    out["plan_single_ops"] = plan_operators(plan)
    out["single_uses_index"] = "HNSW_INDEX_SCAN" in plan
    if not out["single_uses_index"]:
        print("  vss: WARNING: the single-query plan has no HNSW_INDEX_SCAN", flush=True)
    plan_lit = explain(con, VSS_LITERAL.format(vec=vec_literal(Q[0]), dim=dim, k=K))
    out["literal_uses_index"] = "HNSW_INDEX_SCAN" in plan_lit
    # batched LATERAL, DuckDB's default plan (exact: the index is not used)
    plan = explain(con, lateral)
    out["plan_lateral_default"] = plan
    out["plan_lateral_default_ops"] = plan_operators(plan)
    out["lateral_default_uses_index"] = "HNSW_INDEX" in plan
    print(f"  vss: batched LATERAL, default plan ({' > '.join(dict.fromkeys(out['plan_lateral_default_ops']))})",
          flush=True)
    res, tb = time_batch(lambda: con.execute(lateral).fetchall())
    ids, ordered = group_pairs(res, n_q)
    out["lateral_default"] = {**tb, "queries_per_s": n_q / tb["seconds"], "recall": recall_at_k(ids, gt),
                              "rows": len(res), "sorted": ordered, "uses_index": out["lateral_default_uses_index"]}
    print(f"    {tb['seconds']:.3f} s ({n_q / tb['seconds']:,.0f} q/s), recall {out['lateral_default']['recall']:.4f}",
          flush=True)
    # the same with the optimizer that hides the plan shape from vss switched off
    con.execute(f"SET disabled_optimizers = '{TOPN_WINDOW_OPT}'")
    plan = explain(con, lateral)
    out["plan_lateral_index_join"] = plan
    out["lateral_index_join_fires"] = "HNSW_INDEX_JOIN" in plan
    con.execute("RESET disabled_optimizers")
    con.execute(set_qv, [0])
    plan = explain(con, by_var)
    out["plan_by_var"] = plan
    out["by_var_uses_index"] = "HNSW_INDEX_SCAN" in plan

    def run_var(i):  # by variable: SET VARIABLE from the queries temp table by id, then the kNN statement
        con.execute(set_qv, [int(i)])
        return con.execute(by_var).fetchall()

    def config(ef, points: dict, _ids) -> dict:
        # batched LATERAL through HNSW_INDEX_JOIN
        con.execute(f"SET disabled_optimizers = '{TOPN_WINDOW_OPT}'")
        res, tb = time_batch(lambda: con.execute(lateral).fetchall())
        con.execute("RESET disabled_optimizers")
        ids, ordered = group_pairs(res, n_q)
        row = {"ef": ef, **points,
               "lateral_index_join": {**tb, "queries_per_s": n_q / tb["seconds"], "recall": recall_at_k(ids, gt),
                                      "rows": len(res), "sorted": ordered,
                                      "uses_index": out["lateral_index_join_fires"]}}
        print(f"  vss ef={ef:4d}: recall {row['param']['recall']:.4f} | p50 param {row['param']['p50_ms']:.3f} ms, "
              f"literal {row['literal']['p50_ms']:.3f} ms, by variable {row['by_var']['p50_ms']:.3f} ms | "
              f"batched index join {tb['seconds']:.3f} s (recall {row['lateral_index_join']['recall']:.4f})",
              flush=True)
        return row

    out["configs"] = ef_sweep(args.efs, {
        # the reference form: the query vector as a bound parameter
        "param": lambda ef: Side(lambda q: con.execute(sql, [q.tolist()]).fetchall(), Q, row_ids),
        # the query vector as an SQL literal
        "literal": lambda ef: Side(lambda q: con.execute(VSS_LITERAL.format(vec=vec_literal(q), dim=dim, k=K))
                                   .fetchall(), Q, row_ids),
        "by_var": lambda ef: Side(run_var, np.arange(n_q), row_ids,
                                  extra=lambda _: {"uses_index": out["by_var_uses_index"]}),
    }, gt, setup=lambda ef: con.execute(f"SET hnsw_ef_search = {int(ef)}"), row=config)
    con.execute("RESET hnsw_ef_search")
    # what binding one FLOAT[dim] parameter costs in this DuckDB client
    _, lat = time_each(lambda q: con.execute(f"SELECT ?::FLOAT[{dim}]", [q.tolist()]).fetchall(), Q)
    out["bind_vector_param"] = lat_summary(lat, brief=True)
    _, lat = time_each(lambda q: con.execute(f"SELECT [{vec_literal(q)}]::FLOAT[{dim}]").fetchall(), Q)
    out["parse_vector_literal"] = lat_summary(lat, brief=True)
    _, lat = time_each(lambda q: con.execute("SELECT 1").fetchall(), Q)
    out["select_1"] = lat_summary(lat, brief=True)
    _, lat = time_each(lambda i: con.execute(set_qv, [int(i)]).fetchall(), np.arange(n_q))
    out["set_variable"] = lat_summary(lat, brief=True)
    con.execute("SET hnsw_ef_search = 64")
    out["explain_analyze_single"] = explain(con, sql, [Q[0].tolist()], analyze=True)
    con.close()
    return out


# ============================================================================ omendb (main venv)
def build_omendb(base, dim: int, workdir: Path, batch: int = 10_000):
    import omendb

    path = workdir / "omendb"
    shutil.rmtree(path, ignore_errors=True)
    db = omendb.open(path, fsync=False, memtable_bytes=1 << 30, compaction=False)
    config = omendb.HnswConfig(m=M, ef_construction=EF_CONSTRUCTION, min_rows=1000)
    tbl = db.create_table(TABLE, schema=dataset_schema(dim), metric="cosine", index=config)
    data = base.select(["id", "name", "summary", "vector"])
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
    res = {"ingest_s": ingest_s, "flush_s": (t1 - t0) / 1e9, "build_s": (t2 - t1) / 1e9,
           "flush_plus_build_s": (t2 - t0) / 1e9, "wait_ok": bool(ok), "stats": stats, "config": config.to_dict()}
    if stats["segments"] != 1 or stats["indexed_segments"] != 1:
        res["warning"] = (f"expected 1 indexed segment, got {stats['segments']} segment(s), "
                          f"{stats['indexed_segments']} indexed")
    return db, tbl, res


def create_queries_table(run_sql, Q: np.ndarray) -> None:
    """TEMP TABLE queries(id BIGINT, vector FLOAT[dim]) from a bound list-of-structs parameter.

    (``CREATE TEMP TABLE queries AS SELECT * FROM arrow_var`` would need DuckDB's replacement
    scan to see a variable of the caller; ``db.sql`` runs the statement from inside omendb.)"""
    dim = Q.shape[1]
    run_sql(f"CREATE OR REPLACE TEMP TABLE queries AS SELECT u.id AS id, u.vector AS vector FROM "
            f"(SELECT unnest(?::STRUCT(id BIGINT, vector FLOAT[{dim}])[]) AS u)",
            [[{"id": i, "vector": q} for i, q in enumerate(Q.tolist())]])


def bench_omendb_single(db, tbl, Q, gt, efs, default_ef) -> dict:
    """Python API vs SQL, at the default ef and over the sweep."""
    dim = Q.shape[1]

    def sql_of(ef) -> str:
        return OMEN_SQL.format(t=TABLE, dim=dim, k=K, ef="" if ef is None else f", ef := {int(ef)}")

    def sql_side(ef) -> Side:
        sql = sql_of(ef)
        return Side(lambda q: db.sql(sql, params=[q.tolist()]).fetchall(), Q, row_ids, short=True,
                    extra=lambda res: {"sorted": all(all(a[1] <= b[1] for a, b in zip(x, x[1:])) for x in res)})

    def row(ef, p: dict, ids: dict) -> dict:
        r = {"ef": ef, "ef_effective": default_ef if ef is None else ef, "sql": sql_of(ef), **p,
             "same_ids": float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids["python"], ids["sql_api"])])),
             "sql_minus_python_p50_ms": p["sql_api"]["p50_ms"] - p["python"]["p50_ms"]}
        label = f"default ({default_ef})" if ef is None else str(ef)
        print(f"  ef={label:>12s}  python recall {r['python']['recall']:.4f} p50 {r['python']['p50_ms']:.3f} ms | "
              f"SQL recall {r['sql_api']['recall']:.4f} p50 {r['sql_api']['p50_ms']:.3f} ms p99 "
              f"{r['sql_api']['p99_ms']:.3f} ms | SQL - python {r['sql_minus_python_p50_ms']:.3f} ms", flush=True)
        return r

    return {"default_ef": default_ef, "rows": ef_sweep([None, *efs], {
        "python": lambda ef: Side(lambda q: tbl.search(q, k=K, columns=["id"], ef=ef), Q, arrow_ids, short=True),
        "sql_api": sql_side}, gt, row=row)}


def bench_omendb_batch(db, tbl, Q, gt, efs) -> list[dict]:
    n_q = Q.shape[0]
    rows = []
    for ef in [None, *efs]:
        ef_sql = "" if ef is None else f", ef := {int(ef)}"
        sql = OMEN_LATERAL.format(t=TABLE, k=K, ef=ef_sql)
        res, tb = time_batch(lambda: db.sql(sql).fetchall())
        ids, ordered = group_pairs(res, n_q)
        row = {"ef": ef, "sql": sql,
               "lateral": {**tb, "queries_per_s": n_q / tb["seconds"], "recall": recall_at_k(ids, gt),
                           "rows": len(res), "sorted": ordered}}
        r, tb = time_batch(lambda: tbl.search(Q, k=K, columns=["id"], ef=ef))
        p_ids = pad_ids([g for g in _split_by_query(r, n_q)])
        row["python_ids"] = {**tb, "queries_per_s": n_q / tb["seconds"], "recall": recall_at_k(p_ids, gt)}
        _, tb = time_batch(lambda: tbl.search(Q, k=K, ef=ef))
        row["python_all_columns"] = {**tb, "queries_per_s": n_q / tb["seconds"]}
        row["lateral_over_python"] = row["lateral"]["seconds"] / row["python_ids"]["seconds"]
        rows.append(row)
        label = "default" if ef is None else str(ef)
        print(f"  ef={label:>8s}  LATERAL {row['lateral']['seconds']:.3f} s ({row['lateral']['queries_per_s']:,.0f} q/s, "
              f"recall {row['lateral']['recall']:.4f}) | tbl.search(Q, columns=['id']) "
              f"{row['python_ids']['seconds']:.3f} s | tbl.search(Q) {row['python_all_columns']['seconds']:.3f} s | "
              f"ratio {row['lateral_over_python']:.2f}x", flush=True)
    return rows


def _split_by_query(result, n_q: int):
    qs = result["_query"].to_numpy()
    ids = result["id"].to_numpy()
    bounds = np.searchsorted(qs, np.arange(n_q + 1))
    return [ids[bounds[i]:bounds[i + 1]] for i in range(n_q)]


def design_floor(con, Q, sql: str) -> list[dict]:
    """The same query through the same macro over a UDF that returns a fixed, precomputed
    answer (no search, no Python work): what the design costs before omendb does anything."""
    import duckdb
    from omendb.duck import definitions_sql

    dim = Q.shape[1]
    call = f"omen_knn_rows('{TABLE}', ?::FLOAT[{dim}]::FLOAT[], {K}, NULL, NULL, false)"
    kind = con.execute(f"DESCRIBE SELECT {call} AS r", [Q[0].tolist()]).fetchall()[0][1]
    answer = con.sql(f"SELECT {call} AS r", params=[Q[0].tolist()]).to_arrow_table().column("r").chunk(0)

    def fixed(tables, queries, ks, filters, efs, exacts):
        return answer

    args = [duckdb.sqltype(t) for t in ("VARCHAR", "FLOAT[]", "BIGINT", "VARCHAR", "BIGINT", "BOOLEAN")]
    con.create_function("omen_knn_rows_fixed", fixed, args, duckdb.sqltype(kind), type="arrow",
                        null_handling="special", side_effects=True)
    macro = definitions_sql()
    macro = macro[macro.index("CREATE OR REPLACE MACRO omen_knn("):]
    con.execute(macro.replace("MACRO omen_knn(", "MACRO omen_knn_fixed(").replace("omen_knn_rows(", "omen_knn_rows_fixed("))
    fixed_sql = sql.replace("omen_knn(", "omen_knn_fixed(")
    rows = []
    for label, key, fn in [
        ("design floor: con.sql(same), macro over a UDF returning a fixed answer (no search)", "floor con.sql",
         lambda q: con.sql(fixed_sql, params=[q.tolist()]).fetchall()),
        ("design floor: con.execute(same)", "floor con.execute",
         lambda q: con.execute(fixed_sql, [q.tolist()]).fetchall()),
    ]:
        _, lat = time_each(fn, Q)
        rows.append({"label": label, "key": key, **lat_summary(lat, brief=True)})
        print(f"  {label}: p50 {rows[-1]['p50_ms']:.3f} ms", flush=True)
    return rows


def bench_breakdown(db, tbl, Q, gt, default_ef) -> dict:
    """Where the time of one ``omen_knn`` SQL call goes (each piece timed alone over all queries)."""
    import omendb

    dim = Q.shape[1]
    n_q = Q.shape[0]
    sql = OMEN_SQL.format(t=TABLE, dim=dim, k=K, ef="")
    con = omendb.duckdb_connect(db)  # a second connection with the same functions, no per-statement refresh
    create_queries_table(lambda s, p: con.execute(s, p), Q)
    def run_var(i):
        db.sql(SET_QV.format(col="vector"), params=[int(i)])
        return db.sql(OMEN_BY_VAR.format(t=TABLE, k=K)).fetchall()

    pieces: list[tuple[str, str, object, object]] = [
        ("tbl.search (Python API)", "python", lambda q: tbl.search(q, k=K, columns=["id"]), Q),
        ("db.sql(omen_knn ?::FLOAT[]).fetchall()  [reference form]", "db.sql",
         lambda q: db.sql(sql, params=[q.tolist()]).fetchall(), Q),
        ("con.sql(same) on omendb.duckdb_connect(db)  (no refresh)", "con.sql",
         lambda q: con.sql(sql, params=[q.tolist()]).fetchall(), Q),
        ("con.execute(same).fetchall()  (no relation object)", "con.execute",
         lambda q: con.execute(sql, [q.tolist()]).fetchall(), Q),
        ("db.sql with the vector as ?::BLOB (q.tobytes())", "db.sql blob",
         lambda q: db.sql(f"SELECT id, _distance FROM omen_knn('{TABLE}', ?::BLOB, {K})",
                          params=[q.tobytes()]).fetchall(), Q),
        ("db.sql with the vector as an SQL literal", "db.sql literal",
         lambda q: db.sql(f"SELECT id, _distance FROM omen_knn('{TABLE}', [{vec_literal(q)}]::FLOAT[{dim}], {K})")
         .fetchall(), Q),
        ("db.sql by id: one-row LATERAL over the queries temp table", "db.sql by id",
         lambda i: db.sql(OMEN_BY_ID.format(t=TABLE, k=K), params=[int(i)]).fetchall(), np.arange(n_q)),
        ("db.sql by variable: SET VARIABLE qv from the queries temp table by id, then omen_knn(getvariable('qv'))",
         "db.sql by variable", run_var, np.arange(n_q)),
        ("db.sql SET VARIABLE qv alone", "set variable",
         lambda i: db.sql(SET_QV.format(col="vector"), params=[int(i)]), np.arange(n_q)),
        ("con.execute('SELECT 1')  (statement floor)", "select 1", lambda q: con.execute("SELECT 1").fetchall(), Q),
        (f"con.execute('SELECT ?::FLOAT[{dim}]')  (floor + binding the vector)", "bind vector",
         lambda q: con.execute(f"SELECT ?::FLOAT[{dim}]", [q.tolist()]).fetchall(), Q),
        ("con.execute('SELECT len(omen_knn_rows(...))')  (floor + bind + the kNN UDF, its result not unpacked)",
         "udf only",
         lambda q: con.execute(f"SELECT len(struct_extract(omen_knn_rows('{TABLE}', ?::FLOAT[{dim}]::FLOAT[], {K}, "
                               f"NULL, NULL, false), '{TABLE}'))", [q.tolist()]).fetchall(), Q),
    ]
    out: dict = {"pieces": []}
    for label, key, fn, items in pieces:
        try:
            res, lat = time_each(fn, items)
        except Exception as exc:  # internal names (omen_knn_rows, omen_scan__T) may move: report, go on
            out["pieces"].append({"label": label, "key": key, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(f"  {label}: failed ({type(exc).__name__})", flush=True)
            continue
        row = {"label": label, "key": key, **lat_summary(lat, brief=True)}
        if key in ("db.sql blob", "db.sql literal", "db.sql by id", "db.sql by variable", "con.execute"):
            row["recall"] = recall_at_k(row_ids(res), gt)
        out["pieces"].append(row)
        print(f"  {label}: p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms", flush=True)
    out["pieces"] += design_floor(con, Q, sql)
    # pieces inside the UDF, from Python
    extra = []
    try:
        from omendb.index.blas import one_blas_thread

        def pin(_q):
            with one_blas_thread():
                pass

        _, lat = time_each(pin, Q)
        extra.append({"label": "omendb.index.blas.one_blas_thread() enter + exit (run by every UDF call)",
                      "key": "one_blas_thread", **lat_summary(lat, brief=True)})
    except Exception as exc:
        extra.append({"label": "one_blas_thread", "key": "one_blas_thread", "error": str(exc)[:300]})
    try:
        snap = tbl.snapshot()  # internal: what the UDF searches
        _, lat = time_each(lambda q: snap.knn_rows(q[None, :], K, where=None, ef=None, exact=False), Q)
        extra.append({"label": "Snapshot.knn_rows(q, 10) (the UDF's search call, internal API)",
                      "key": "snapshot.knn_rows", **lat_summary(lat, brief=True)})
    except Exception as exc:
        extra.append({"label": "Snapshot.knn_rows", "key": "snapshot.knn_rows", "error": str(exc)[:300]})
    for row in extra:
        if "p50_ms" in row:
            print(f"  {row['label']}: p50 {row['p50_ms']:.3f} ms", flush=True)
    out["pieces"] += extra
    try:
        out["explain_analyze"] = explain(con, sql, [Q[0].tolist()], analyze=True)
    except Exception as exc:
        out["explain_analyze"] = f"failed: {exc}"
    try:
        out["explain_analyze_lateral"] = explain(con, OMEN_LATERAL.format(t=TABLE, k=K, ef=""), analyze=True)
    except Exception as exc:
        out["explain_analyze_lateral"] = f"failed: {exc}"
    out["threads"] = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    con.close()
    return out


def machine(workdir: Path) -> dict:
    return machine_info(workdir, lambda: {"duckdb": package_version("duckdb"), "faiss": package_version("faiss"),
                                          "threadpoolctl": package_version("threadpoolctl")}, watched=("omendb", "sql"))


# ============================================================================ summary + report
def ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}x"


def summarize(res: dict) -> dict:
    single = res["omendb"]["single"]["rows"]
    default = single[0]
    s: dict = {"sql_p50_ms": default["sql_api"]["p50_ms"], "python_p50_ms": default["python"]["p50_ms"],
               "sql_recall": default["sql_api"]["recall"],
               "sql_minus_python_p50_ms": default["sql_minus_python_p50_ms"]}
    s["sql_overhead_ok"] = s["sql_minus_python_p50_ms"] <= SQL_OVERHEAD_TARGET_MS
    vss = res.get("vss")
    if vss and "configs" in vss:
        def best(form: str, recall: float):
            return fastest_at_recall(vss["configs"], recall, point=lambda c: c[form], slack=1e-9)

        b = best("param", s["sql_recall"])
        s["vss_match_ef"] = b["ef"] if b else None
        s["vss_match_p50_ms"] = b["param"]["p50_ms"] if b else None
        s["vss_match_recall"] = b["param"]["recall"] if b else None
        s["vss_speedup"] = (b["param"]["p50_ms"] / s["sql_p50_ms"]) if b else None
        s["vss_speedup_ok"] = bool(b and s["vss_speedup"] >= VSS_SPEEDUP_TARGET)
        # like for like: both read the query vector from a temp table into a variable (no vector parameter)
        by_var = next((p for p in res["omendb"]["breakdown"]["pieces"] if p.get("key") == "db.sql by variable"), None)
        b2 = best("by_var", by_var["recall"]) if by_var and "recall" in by_var else None
        if by_var and "p50_ms" in by_var:
            s["by_var_omendb_p50_ms"] = by_var["p50_ms"]
            s["by_var_omendb_recall"] = by_var["recall"]
        if b2 and b2["by_var"].get("uses_index"):
            s["by_var_vss_ef"] = b2["ef"]
            s["by_var_vss_p50_ms"] = b2["by_var"]["p50_ms"]
            s["by_var_vss_recall"] = b2["by_var"]["recall"]
            s["by_var_speedup"] = b2["by_var"]["p50_ms"] / by_var["p50_ms"]
        # engine cost per query from the batched forms: omendb LATERAL (default ef) vs vss HNSW_INDEX_JOIN
        lat0 = res["omendb"]["batch"][0]["lateral"]
        c = fastest_at_recall([c for c in vss["configs"] if c["lateral_index_join"]["uses_index"]], lat0["recall"],
                              point=lambda c: c["lateral_index_join"], slack=1e-9, key="seconds")
        if c:
            s["batch_vss_ef"] = c["ef"]
            s["batch_vss_s"] = c["lateral_index_join"]["seconds"]
            s["batch_omendb_s"] = lat0["seconds"]
            s["batch_speedup"] = c["lateral_index_join"]["seconds"] / lat0["seconds"]
        # per omendb SQL ef: vss' fastest config with >= that recall
        s["matched"] = []
        for r in single[1:]:
            m = best("param", r["sql_api"]["recall"])
            s["matched"].append({"ef": r["ef"], "omendb_recall": r["sql_api"]["recall"],
                                 "omendb_p50_ms": r["sql_api"]["p50_ms"],
                                 "vss_ef": m["ef"] if m else None,
                                 "vss_p50_ms": m["param"]["p50_ms"] if m else None,
                                 "vss_recall": m["param"]["recall"] if m else None,
                                 "speedup": (m["param"]["p50_ms"] / r["sql_api"]["p50_ms"]) if m else None})
    return s


def markdown(res: dict) -> str:
    a = res["args"]
    s = res["summary"]
    om = res["omendb"]
    b = om["build"]
    dim = res["dim"]
    default_ef = om["single"]["default_ef"]
    L = title("omendb SQL benchmark", a["quick"], res["command"]) + [
         f"{a['rows']:,} rows x {dim} dims (pypi-minilm-100k, float16 on disk -> float32), cosine, k={K}; "
         f"{a['queries']:,} queries (single queries each timed alone after {WARMUP} warm-up calls; the batched "
         f"forms answer all {a['queries']:,} in one call, median of {BATCH_REPS} after a warm-up); ground truth: "
         f"{res['ground_truth']}. HNSW m={M}, ef_construction={EF_CONSTRUCTION} on both sides.", ""]
    # ---- targets
    L += ["## Targets", "", "| check | value | target | met |", "| --- | ---: | ---: | :---: |"]
    L.append(f"| SQL p50 - Python p50 at the default ef ({default_ef}), ms | "
             f"{s['sql_p50_ms']:.3f} - {s['python_p50_ms']:.3f} = **{s['sql_minus_python_p50_ms']:.3f}** | "
             f"<= {SQL_OVERHEAD_TARGET_MS:.0f} | {'yes' if s['sql_overhead_ok'] else '**no**'} |")
    floor = {p["key"]: p for p in res["omendb"].get("breakdown", {}).get("pieces", []) if "p50_ms" in p}
    if "floor con.sql" in floor and "floor con.execute" in floor:
        L.append(f"| design floor: the same SQL through the same macro over a UDF that returns a fixed answer (no "
                 f"search, no Python work), minus Python p50: relation (`con.sql`, as `db.sql`) "
                 f"{floor['floor con.sql']['p50_ms']:.3f} - {s['python_p50_ms']:.3f} = "
                 f"{floor['floor con.sql']['p50_ms'] - s['python_p50_ms']:.3f}; `con.execute` "
                 f"{floor['floor con.execute']['p50_ms']:.3f} - {s['python_p50_ms']:.3f} = "
                 f"{floor['floor con.execute']['p50_ms'] - s['python_p50_ms']:.3f} | (info) | |")
    if "vss_speedup" in s:
        if s["vss_speedup"] is None:
            L.append(f"| vss p50 / omendb SQL p50 at recall >= {s['sql_recall']:.4f} | vss never reaches that recall "
                     f"in the sweep | >= {VSS_SPEEDUP_TARGET:.0f}x | — |")
        else:
            L.append(f"| vss p50 / omendb SQL p50 at recall >= omendb's ({s['sql_recall']:.4f}): vss ef="
                     f"{s['vss_match_ef']} (recall {s['vss_match_recall']:.4f}) {s['vss_match_p50_ms']:.3f} ms vs "
                     f"{s['sql_p50_ms']:.3f} ms | **{s['vss_speedup']:.2f}x** | >= {VSS_SPEEDUP_TARGET:.0f}x | "
                     f"{'yes' if s['vss_speedup_ok'] else '**no**'} |")
        if "by_var_speedup" in s:
            L.append(f"| same, query vector taken from a temp table into a variable (no vector parameter, so no "
                     f"client binding cost): vss ef={s['by_var_vss_ef']} (recall {s['by_var_vss_recall']:.4f}) "
                     f"{s['by_var_vss_p50_ms']:.3f} ms vs omendb (recall {s['by_var_omendb_recall']:.4f}) "
                     f"{s['by_var_omendb_p50_ms']:.3f} ms | {s['by_var_speedup']:.2f}x | (info) | |")
        if "batch_speedup" in s:
            L.append(f"| batched LATERAL at recall >= omendb's: vss HNSW_INDEX_JOIN ef={s['batch_vss_ef']} "
                     f"{s['batch_vss_s']:.3f} s vs omendb {s['batch_omendb_s']:.3f} s | {s['batch_speedup']:.2f}x | "
                     f"(info) | |")
    else:
        L.append(f"| vss comparison | skipped ({res.get('vss', {}).get('error', 'no --vss-python')}) | "
                 f">= {VSS_SPEEDUP_TARGET:.0f}x | — |")
    L += ["", f"omendb build: ingest {b['ingest_s']:.2f} s (fsync=False), flush {b['flush_s']:.2f} s, HNSW build "
          f"{b['build_s']:.2f} s (flush -> wait_for_index); {b['stats']['segments']} segment(s), "
          f"{b['stats']['indexed_segments']} indexed." + (f" **{b['warning']}**" if b.get("warning") else ""), ""]
    # ---- single queries
    L += ["## Single queries: omendb Python API vs SQL", "",
          "| ef | Python recall | Python p50 ms | Python p99 ms | SQL recall | SQL p50 ms | SQL p99 ms | "
          "SQL - Python p50 ms | same ids |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in om["single"]["rows"]:
        p, q = r["python"], r["sql_api"]
        label = f"default ({default_ef})" if r["ef"] is None else str(r["ef"])
        L.append(f"| {label} | {f4(p['recall'])} | {f3(p['p50_ms'])} | {f3(p['p99_ms'])} | {f4(q['recall'])} | "
                 f"{f3(q['p50_ms'])} | {f3(q['p99_ms'])} | {r['sql_minus_python_p50_ms']:.3f} | {r['same_ids']:.3f} |")
    L += ["", f"Python = `tbl.search(q, k=10, columns=['id'], ef=ef)`; SQL = `db.sql(\"{OMEN_SQL.format(t=TABLE, dim=dim, k=K, ef='')}\", "
          "params=[q.tolist()]).fetchall()` (sweep rows add `ef := n`).", ""]
    short = sum(r["python"]["short_queries"] + r["sql_api"]["short_queries"] for r in om["single"]["rows"])
    if short:
        L += [f"**{short} query calls returned fewer than k rows.**", ""]
    if not all(r["sql_api"]["sorted"] for r in om["single"]["rows"]):
        L += ["**Some SQL answers were not sorted by `_distance`.**", ""]
    # ---- breakdown
    bd = om["breakdown"]
    L += ["## Where the SQL time goes (omendb, default ef, p50 over all queries)", "",
          "| piece | p50 ms | p99 ms | recall |", "| --- | ---: | ---: | ---: |"]
    for p in bd["pieces"]:
        if "error" in p:
            L.append(f"| {p['label']} | failed: {p['error'][:80]} | | |")
        else:
            L.append(f"| {p['label']} | {f3(p['p50_ms'])} | {f3(p['p99_ms'])} | {f4(p.get('recall'))} |")
    L += ["", f"DuckDB threads on the omendb connection: {bd.get('threads')}. `omen_knn` expands to the vectorised "
          "Arrow UDF `omen_knn_rows` (one batched search per chunk of query rows), whose result per query is a struct "
          "with one field per table listing the hit rows; the macro picks the table's field with `struct_extract` and "
          "unnests it (no join back to the table). `db.sql` also checks before every statement whether "
          "a table changed. EXPLAIN ANALYZE of one reference query is in the JSON (`omendb.breakdown.explain_analyze`).",
          ""]
    # ---- batched
    L += ["## Batched: all queries in one call", "",
          "| system | form | ef | seconds | queries/s | recall@10 | time vs omendb `tbl.search(Q, columns=['id'])`, default ef |",
          "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    base_s = om["batch"][0]["python_ids"]["seconds"]
    for r in om["batch"]:
        label = f"default ({default_ef})" if r["ef"] is None else str(r["ef"])
        L.append(f"| omendb | SQL `LATERAL omen_knn(...)` | {label} | {r['lateral']['seconds']:.3f} | "
                 f"{r['lateral']['queries_per_s']:,.0f} | {f4(r['lateral']['recall'])} | "
                 f"{r['lateral']['seconds'] / base_s:.2f}x |")
        L.append(f"| omendb | `tbl.search(Q, k=10, columns=['id'])` | {label} | {r['python_ids']['seconds']:.3f} | "
                 f"{r['python_ids']['queries_per_s']:,.0f} | {f4(r['python_ids']['recall'])} | "
                 f"{r['python_ids']['seconds'] / base_s:.2f}x |")
        L.append(f"| omendb | `tbl.search(Q, k=10)` (all columns) | {label} | "
                 f"{r['python_all_columns']['seconds']:.3f} | {r['python_all_columns']['queries_per_s']:,.0f} | | "
                 f"{r['python_all_columns']['seconds'] / base_s:.2f}x |")
    vss = res.get("vss")
    if vss and "configs" in vss:
        ld = vss["lateral_default"]
        L.append(f"| vss | LATERAL, DuckDB's default plan ({'index' if ld['uses_index'] else 'exact, no index'}) | — | "
                 f"{ld['seconds']:.3f} | {ld['queries_per_s']:,.0f} | {f4(ld['recall'])} | "
                 f"{ld['seconds'] / base_s:.2f}x |")
        for c in vss["configs"]:
            lj = c["lateral_index_join"]
            L.append(f"| vss | LATERAL + `disabled_optimizers='{TOPN_WINDOW_OPT}'` "
                     f"({'HNSW_INDEX_JOIN' if lj['uses_index'] else 'no index'}) | {c['ef']} | {lj['seconds']:.3f} | "
                     f"{lj['queries_per_s']:,.0f} | {f4(lj['recall'])} | {lj['seconds'] / base_s:.2f}x |")
    L += ["", f"omendb: `{OMEN_LATERAL.format(t=TABLE, k=K, ef='')}` over a TEMP TABLE `queries(id, vector FLOAT[{dim}])`, "
          "`.fetchall()`. vss: `" + VSS_LATERAL.format(k=K) + "`, `.fetchall()`.", ""]
    # ---- vss
    L += ["## DuckDB vss", ""]
    if not vss:
        L += ["Skipped (no `--vss-python`).", ""]
    elif "error" in vss:
        L += [f"Failed: {vss['error']}", ""]
    else:
        L += [f"DuckDB {vss['duckdb']}, vss {vss['vss_version']} (wheel duckdb-extension-vss, `INSTALL '<file>'; "
              f"LOAD vss`, no network), {vss['threads']} DuckDB threads, Python {vss['python']}. Table load "
              f"{vss['table_load_s']:.2f} s; `CREATE INDEX ... USING HNSW (vec) WITH (metric = 'cosine', M = {M}, "
              f"ef_construction = {EF_CONSTRUCTION})` **{vss['build_s']:.2f} s** (omendb: {b['build_s']:.2f} s).", "",
              "| ef (`hnsw_ef_search`) | recall@10 | p50 ms `?::FLOAT[]` param | p99 ms | p50 ms SQL literal | "
              "p50 ms by variable | batched index join s |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for c in vss["configs"]:
            L.append(f"| {c['ef']} | {f4(c['param']['recall'])} | {f3(c['param']['p50_ms'])} | "
                     f"{f3(c['param']['p99_ms'])} | {f3(c['literal']['p50_ms'])} | {f3(c['by_var']['p50_ms'])} | "
                     f"{c['lateral_index_join']['seconds']:.3f} |")
        L += ["", f"Reference form: `{VSS_SQL.format(dim=dim, k=K)}` with `params=[q.tolist()]`; plan: "
              f"{' > '.join(vss['plan_single_ops'])} (HNSW_INDEX_SCAN {'present' if vss['single_uses_index'] else '**absent**'}). "
              f"By variable: `{SET_QV.format(col='vec')}` then `{VSS_BY_VAR.format(k=K)}`, both timed "
              f"(HNSW_INDEX_SCAN {'present' if vss['by_var_uses_index'] else '**absent**'}; the SET alone p50 "
              f"{vss['set_variable']['p50_ms']:.3f} ms). The literal column includes formatting the literal in "
              "Python (~0.1 ms).", "",
              f"Client-side cost in this DuckDB {vss['duckdb']}: `SELECT 1` p50 {vss['select_1']['p50_ms']:.3f} ms; "
              f"`SELECT ?::FLOAT[{dim}]` with a {dim}-float list p50 **{vss['bind_vector_param']['p50_ms']:.3f} ms**; "
              f"parsing the same vector as a literal p50 {vss['parse_vector_literal']['p50_ms']:.3f} ms. "
              f"Batched LATERAL default plan: {' > '.join(dict.fromkeys(vss['plan_lateral_default_ops']))}.", ""]
        if s.get("matched"):
            L += ["Per omendb SQL ef: the fastest vss ef with recall >= omendb's (parameter form both sides):", "",
                  "| omendb ef | omendb recall | omendb SQL p50 ms | vss ef | vss recall | vss p50 ms | vss / omendb |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for m in s["matched"]:
                L.append(f"| {m['ef']} | {f4(m['omendb_recall'])} | {f3(m['omendb_p50_ms'])} | {m['vss_ef'] or '—'} | "
                         f"{f4(m['vss_recall'])} | {f3(m['vss_p50_ms'])} | "
                         f"{ratio(m['speedup'])} |")
            L.append("")
    # ---- machine
    m = res["machine"]
    libraries = (f"Python {m['python']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}, duckdb {m['duckdb']}, "
                 f"faiss {m['faiss']}, threadpoolctl {m['threadpoolctl']}")
    vss_line = [f"- vss: {res['vss_python']}: {json.dumps(res.get('vss_versions', {}))}"] \
        if res.get("vss_python") else []
    L += machine_section(m, res["wall_s"], libraries, vss_line) + [""]
    return "\n".join(L)


# ============================================================================ main
def parse_args(argv=None):
    p = parser(__doc__)
    add_run_args(p, "sql", quick="20K rows, 200 queries, 4 ef values: a sanity check",
                 queries="queries, single and batched (default 1,000; --quick 200)")
    p.add_argument("--efs", type=lambda s: [int(x) for x in s.split(",")],
                   help=f"ef values, comma-separated (default {','.join(map(str, FULL_EFS))}; "
                        f"--quick {','.join(map(str, QUICK_EFS))})")
    p.add_argument("--vss-python", help="python of a venv with duckdb + duckdb-extension-vss "
                   "(benchmarks/requirements-vss.txt); vss is skipped without it")
    p.add_argument("--role", choices=["main", "vss"], default="main", help=argparse.SUPPRESS)
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
    if args.role == "vss":
        out = vss_role(args)
        Path(args.result).write_text(json.dumps(out, indent=1, default=str))
        return 0

    with Run(args, "sql", machine, skip_args=("role", "result")) as run:
        res, workdir = run.res, run.workdir
        print(f"loading {args.rows:,} rows, {args.queries:,} queries from {args.data}", flush=True)
        base, X, Q, dim, _ = load_dataset(args.data, args.rows, args.queries)
        res["dim"] = dim
        if not np.array_equal(base["id"].to_numpy(), np.arange(args.rows)):
            raise SystemExit("base.parquet ids are expected to be 0..N-1 in file order")
        gt, res["ground_truth"] = ground_truth(args.data, X, Q, K, args.rows)
        np.save(workdir / "gt10.npy", gt)
        np.save(workdir / "queries.npy", Q)
        del X
        gc.collect()

        # ---- omendb: one segment, one HNSW index
        print("omendb: ingest + flush + index build", flush=True)
        db, tbl, build = build_omendb(base, dim, workdir)
        del base
        gc.collect()
        default_ef = int(build["stats"].get("index", {}).get("ef_search") or build["config"].get("ef_search") or 0) or None
        print(f"  ingest {build['ingest_s']:.2f} s, flush {build['flush_s']:.2f} s, build {build['build_s']:.2f} s "
              f"({build['stats']['segments']} segment(s), {build['stats']['indexed_segments']} indexed; "
              f"default ef_search {default_ef})", flush=True)
        res["omendb"] = {"build": build}
        create_queries_table(lambda s, p: db.sql(s, params=p), Q)

        print("omendb: single queries, Python API vs SQL", flush=True)
        res["omendb"]["single"] = bench_omendb_single(db, tbl, Q, gt, args.efs, default_ef)
        print("omendb: batched (LATERAL vs tbl.search(Q))", flush=True)
        res["omendb"]["batch"] = bench_omendb_batch(db, tbl, Q, gt, args.efs)
        print("omendb: SQL time breakdown (default ef)", flush=True)
        res["omendb"]["breakdown"] = bench_breakdown(db, tbl, Q, gt, default_ef)
        db.close()
        gc.collect()

        # ---- vss in its own venv
        if args.vss_python:
            res["vss_python"] = args.vss_python
            res["vss_versions"] = venv_versions(args.vss_python, ("duckdb", "duckdb-extension-vss", "pyarrow", "numpy"))
            print("DuckDB vss (subprocess)", flush=True)
            result = workdir / "vss.json"
            t0 = time.time()
            res["vss"] = run_child([args.vss_python, str(Path(__file__).resolve()), "--role", "vss",
                                    "--result", str(result), "--data", str(args.data), "--rows", str(args.rows),
                                    "--queries", str(args.queries), "--efs", ",".join(map(str, args.efs)),
                                    "--workdir", str(workdir)] + (["--quick"] if args.quick else []), result,
                                   timeout=6 * 3600)
            print(f"  vss done in {time.time() - t0:.0f} s", flush=True)
        else:
            print("vss skipped (no --vss-python)", flush=True)

        res["summary"] = summarize(res)
        run.finish(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
