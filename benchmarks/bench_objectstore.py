#!/usr/bin/env python
"""Object-storage benchmark: a database in a local S3 server (moto) next to a local folder.

Measures, on the pypi-minilm-100k dataset (100,000 x 384 unit vectors, cosine), k=10,
the same work on ``s3://`` and on a local folder of the same disk, side by side:

1. durable ``add`` of 1,000-row batches (every batch acknowledged with its log record
   in the store / fsynced on disk): per-add latency p50/p99 and rows/s; then ``flush``
   (segment upload) and ``create_index`` + ``wait_for_index`` (index upload) seconds;
2. small durable commits (one row per ``add``): p50/p99, the cost of one store round trip;
3. a reader on another cache folder (``read_only=True``): open seconds with an empty
   cache (everything fetched) and with a warm one; search p50/p99 of 1,000 queries on
   its first pass and its second, next to the local folder's reader;
4. requests and bytes the warm reader sends to the store per query (target: none);
5. how long a reader takes to see a new version: the writer adds and flushes, the
   reader calls ``refresh()`` in a loop (``poll_interval`` bounds it without the loop).

The S3 server is moto's server mode on 127.0.0.1 (in memory, so its latency is that of
a local HTTP service, not of a cloud region: a region adds its network round trip to
every durable commit and to a reader's first fetch). Results:
benchmarks/results/objectstore.json and objectstore.md (``--quick``: objectstore-quick.*).

    python benchmarks/bench_objectstore.py            # full; run it alone
    python benchmarks/bench_objectstore.py --quick    # 20K rows, 200 queries
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from _harness import (WARMUP, Run, add_run_args, f2, f3, lat_summary, load_dataset, machine_info, machine_section,
                      md_table, now_ns, parser, run_defaults, title)

HERE = Path(__file__).resolve().parent
BATCH = 1000
SMALL_COMMITS = 200


def start_s3(workdir: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(workdir / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moto's S3 server did not start (see {workdir / 'moto.log'})")
            time.sleep(0.1)


class RequestCounter:
    """Counts the requests a database's store client sends, and their body bytes, both ways."""

    def __init__(self, db) -> None:
        self.requests = self.sent = self.received = 0
        events = db._root.store._client.meta.events
        events.register("before-send.s3", self._before)
        events.register("after-call.s3", self._after)

    def _before(self, request, **_) -> None:
        self.requests += 1
        body = request.body
        self.sent += len(body) if isinstance(body, (bytes, bytearray)) else 0

    def _after(self, http_response, **_) -> None:
        self.received += len(http_response.content or b"")

    def snapshot(self) -> tuple[int, int, int]:
        return self.requests, self.sent, self.received


def ingest(db, name: str, table_data, rows: int) -> dict:
    table = db.create_table(name, schema=table_data.schema, metric="cosine")
    lat = []
    start = now_ns()
    for offset in range(0, rows, BATCH):
        t0 = now_ns()
        table.add(table_data.slice(offset, BATCH))
        lat.append(now_ns() - t0)
    add_s = (now_ns() - start) / 1e9
    t0 = time.perf_counter()
    table.flush()
    flush_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table.create_index()
    table.wait_for_index(timeout=3600)
    index_s = time.perf_counter() - t0
    small = []
    for i in range(SMALL_COMMITS):
        row = table_data.slice(i, 1)
        t0 = now_ns()
        table.upsert(row)
        small.append(now_ns() - t0)
    table.flush()
    return {"add": lat_summary(lat), "rows_per_s": rows / add_s, "flush_s": flush_s, "index_s": index_s,
            "one_row_commit": lat_summary(small)}


def search_passes(table, Q: np.ndarray) -> dict:
    out = {}
    for name in ("first_pass", "second_pass"):
        lat = []
        for q in Q:
            t0 = now_ns()
            table.search(q, k=10, columns=["id"])
            lat.append(now_ns() - t0)
        out[name] = lat_summary(lat)
    return out


def main() -> None:
    import boto3
    import pyarrow as pa

    p = parser(__doc__)
    add_run_args(p, "objectstore", "20,000 rows, 200 queries", "queries to time (default 1,000; --quick 200)")
    args = p.parse_args()
    run_defaults(args)
    data = load_dataset(args.data, args.rows, args.queries, columns=["id", "name", "summary", "vector"])
    table_data = pa.table({"id": data.base["id"], "name": data.base["name"], "summary": data.base["summary"],
                           "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.X.ravel()), data.dim)})
    with Run(args, "objectstore", lambda w: machine_info(w, lambda: {"boto3": boto3.__version__})) as run:
        server, endpoint = start_s3(run.workdir)
        try:
            run.res.update({"rows": args.rows, "queries": args.queries, "batch": BATCH})
            measure(run.res, run.workdir, endpoint, table_data, data.Q)
        finally:
            server.terminate()
            server.wait(timeout=30)
        run.finish(markdown)


def measure(res: dict, workdir: Path, endpoint: str, table_data, Q: np.ndarray) -> None:
    import boto3

    import omendb

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                          region_name="us-east-1")
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    store = {"endpoint_url": endpoint, "key": "k", "secret": "s", "region": "us-east-1"}
    uri, rows = f"s3://{bucket}/db", table_data.num_rows

    print("ingest: local folder, then s3 ...", flush=True)
    local = omendb.open(workdir / "local", compaction=False)
    res["local"] = {"ingest": ingest(local, "docs", table_data, rows)}
    remote = omendb.open(uri, storage_options=store, cache_dir=workdir / "writer-cache", compaction=False)
    res["s3"] = {"ingest": ingest(remote, "docs", table_data, rows)}

    print("readers ...", flush=True)
    local_reader_db = omendb.open(workdir / "local", read_only=True)
    local_reader = local_reader_db.open_table("docs")
    for q in Q[:WARMUP]:
        local_reader.search(q, k=10)
    res["local"]["search"] = search_passes(local_reader, Q)
    local_reader_db.close()
    reader_cache = workdir / "reader-cache"
    t0 = time.perf_counter()
    reader_db = omendb.open(uri, storage_options=store, cache_dir=reader_cache, read_only=True, poll_interval=3600)
    counter = RequestCounter(reader_db)
    reader = reader_db.open_table("docs")
    cold_open_s = time.perf_counter() - t0
    cold = counter.snapshot()
    searches = search_passes(reader, Q)
    before = counter.snapshot()
    for q in Q:
        reader.search(q, k=10, columns=["id"])
    after = counter.snapshot()
    reader_db.close()
    t0 = time.perf_counter()
    with omendb.open(uri, storage_options=store, cache_dir=reader_cache, read_only=True) as warm_db:
        warm_db.open_table("docs").count()
    warm_open_s = time.perf_counter() - t0
    res["s3"]["reader"] = {
        "cold_open_s": cold_open_s, "cold_open_requests": cold[0], "cold_open_bytes": cold[2],
        "warm_open_s": warm_open_s, "search": searches,
        "warm_per_query": {"requests": (after[0] - before[0]) / len(Q), "bytes_sent": (after[1] - before[1]) / len(Q),
                           "bytes_received": (after[2] - before[2]) / len(Q)}}

    print("new version visibility ...", flush=True)
    with omendb.open(uri, storage_options=store, cache_dir=reader_cache, read_only=True,
                     poll_interval=3600) as follower_db:
        follower = follower_db.open_table("docs")
        writer_table = remote.open_table("docs")
        seen = []
        for round_ in range(5):
            start_version = follower.version
            writer_table.upsert(table_data.slice(round_ * 100, 100))
            t0 = time.perf_counter()
            writer_table.flush()
            published = time.perf_counter()
            while follower.refresh() == start_version and time.perf_counter() - published < 60:
                pass
            seen.append({"flush_s": published - t0, "visible_after_publish_s": time.perf_counter() - published})
    res["s3"]["new_version"] = seen
    local.close()
    remote.close()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    res["store_bytes"] = sum(o["Size"] for page in pages for o in page.get("Contents", ()))


def markdown(r: dict) -> str:
    li, si = r["local"]["ingest"], r["s3"]["ingest"]
    ls, rs = r["local"]["search"], r["s3"]["reader"]
    lines = [*title(f"Object storage: s3:// (moto on 127.0.0.1) next to a local folder, {r['rows']:,} x 384",
                    r["args"]["quick"], r["command"]),
             "Written by `benchmarks/bench_objectstore.py` (its docstring gives the method). Both sides ran in one "
             "process, one after the other, on this machine's disk.", "",
             "## Durable writes", "",
             *md_table(["", "local folder", "s3://", "s3 / local"], "lrrr", [
                 [f"add {r['batch']:,} rows, p50 ms", f2(li["add"]["p50_ms"]), f2(si["add"]["p50_ms"]),
                  f2(si["add"]["p50_ms"] / li["add"]["p50_ms"])],
                 [f"add {r['batch']:,} rows, p99 ms", f2(li["add"]["p99_ms"]), f2(si["add"]["p99_ms"]),
                  f2(si["add"]["p99_ms"] / li["add"]["p99_ms"])],
                 ["rows/s", f"{li['rows_per_s']:,.0f}", f"{si['rows_per_s']:,.0f}",
                  f2(si["rows_per_s"] / li["rows_per_s"])],
                 ["one-row commit p50 ms", f2(li["one_row_commit"]["p50_ms"]), f2(si["one_row_commit"]["p50_ms"]),
                  f2(si["one_row_commit"]["p50_ms"] / li["one_row_commit"]["p50_ms"])],
                 ["one-row commit p99 ms", f2(li["one_row_commit"]["p99_ms"]), f2(si["one_row_commit"]["p99_ms"]),
                  f2(si["one_row_commit"]["p99_ms"] / li["one_row_commit"]["p99_ms"])],
                 ["flush s", f2(li["flush_s"]), f2(si["flush_s"]), f2(si["flush_s"] / li["flush_s"])],
                 ["create_index + wait s", f2(li["index_s"]), f2(si["index_s"]), f2(si["index_s"] / li["index_s"])],
             ]), "",
             "## Readers", "",
             *md_table(["", "local folder", "s3:// reader"], "lrr", [
                 ["open, empty cache s", "—", f2(rs["cold_open_s"])],
                 ["open, warm cache s", "—", f2(rs["warm_open_s"])],
                 ["search p50 ms, first pass", f3(ls["first_pass"]["p50_ms"]), f3(rs["search"]["first_pass"]["p50_ms"])],
                 ["search p99 ms, first pass", f3(ls["first_pass"]["p99_ms"]), f3(rs["search"]["first_pass"]["p99_ms"])],
                 ["search p50 ms, second pass", f3(ls["second_pass"]["p50_ms"]),
                  f3(rs["search"]["second_pass"]["p50_ms"])],
                 ["search p99 ms, second pass", f3(ls["second_pass"]["p99_ms"]),
                  f3(rs["search"]["second_pass"]["p99_ms"])],
             ]), "",
             f"Opening with an empty cache sent {rs['cold_open_requests']} requests and fetched "
             f"{rs['cold_open_bytes'] / (1 << 20):,.1f} MiB. Once warm, a query sent "
             f"**{rs['warm_per_query']['requests']:g} requests** and moved "
             f"**{rs['warm_per_query']['bytes_sent'] + rs['warm_per_query']['bytes_received']:g} bytes** "
             "(target: none).", "",
             "## A new version reaches a reader", "",
             *md_table(["round", "writer flush s", "reader sees it after publish s"], "rrr",
                       [[i + 1, f3(s["flush_s"]), f3(s["visible_after_publish_s"])]
                        for i, s in enumerate(r["s3"]["new_version"])]), "",
             "A reader looks every `poll_interval` seconds (default 5) before a read, so without `refresh()` a new "
             "version is seen at most that long after it is published, plus the fetch of its new files.", "",
             *machine_section(r["machine"], r["wall_s"], f"boto3 {r['machine'].get('boto3')}, moto server mode"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
