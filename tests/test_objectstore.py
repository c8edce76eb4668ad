"""Databases on object storage (``s3://``), against a real S3 server on 127.0.0.1.

Two cache folders stand for two machines: nothing passes between them but the bucket.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pytest

import omendb
from conftest import S3Database

DIM = 8


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _rows(ids, seed: int = 0) -> pa.Table:
    ids = list(ids)
    vectors = _vectors(len(ids), seed)
    return pa.table({"id": pa.array(ids, pa.int64()), "tag": [f"t{i % 3}" for i in ids],
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)})


def _ids(table) -> list[int]:
    return sorted(table.to_arrow()["id"].to_pylist())


def test_the_table_api_works_on_a_bucket_and_a_second_machine_sees_it_all(s3_db: S3Database) -> None:
    with s3_db.open("a", memtable_bytes=1 << 16) as db:
        table = db.create_table("docs", _rows(range(100)))
        table.add(_rows(range(100, 200), seed=1))
        table.upsert(_rows([5, 6], seed=2))
        table.delete([7, 8])
        table.delete(where="id >= 190")
        table.create_index()
        expected = _ids(table)
        query = _vectors(1, seed=2)[0]
        hits = table.search(query, k=3, where="tag = 't2'")
        assert hits["id"].to_pylist()[0] == 5 and set(hits["tag"].to_pylist()) == {"t2"}
        assert db.table_names() == ["docs"]
        table.compact()
        writer_version = table.version
    assert any(k.startswith("db/docs/segments/") for k in s3_db.keys())
    with s3_db.open("b") as db:  # an empty cache: everything comes from the bucket
        table = db.open_table("docs")
        assert _ids(table) == expected and len(expected) == 188
        assert table.version == writer_version
        hits = table.search(query, k=3, where="tag = 't2'")
        assert hits["id"].to_pylist()[0] == 5 and hits["_distance"][0].as_py() == pytest.approx(0, abs=1e-4)
        assert table.get([5])["tag"].to_pylist() == ["t2"]


def test_acknowledged_writes_are_in_the_bucket_before_any_flush(s3_db: S3Database) -> None:
    db = s3_db.open("a")
    table = db.create_table("t", _rows(range(10)))
    table.add(_rows(range(10, 20), seed=1))
    table.delete([3])
    assert not s3_db.keys("db/t/segments/"), "nothing was flushed"
    # the writer is alive and never flushed: a second machine replays the bucket's log
    with s3_db.open("b") as other:
        assert _ids(other.open_table("t")) == [i for i in range(20) if i != 3]
        manifests = s3_db.keys("db/t/manifests/")
        db.close()  # the first writer was taken over: its close publishes nothing, and loses nothing
        assert s3_db.keys("db/t/manifests/") == manifests


def test_a_sigkilled_writer_loses_no_acknowledged_write(s3_db: S3Database) -> None:
    code = textwrap.dedent(f"""
        import sys, numpy as np, pyarrow as pa, omendb
        db = omendb.open({s3_db.uri!r}, storage_options={s3_db.server.options!r},
                         cache_dir={str(s3_db.tmp / 'killed')!r}, memtable_bytes=1 << 14)
        t = db.create_table("t", dim={DIM})
        rng = np.random.default_rng(0)
        for i in range(100000):
            v = rng.standard_normal((20, {DIM})).astype(np.float32)
            t.add(pa.table({{"id": pa.array(range(i * 20, i * 20 + 20), pa.int64()),
                            "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), {DIM})}}))
            print(i, flush=True)
    """)
    package_root = os.path.dirname(os.path.dirname(omendb.__file__))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": package_root})
    acked = -1
    deadline = time.monotonic() + 60
    try:
        while acked < 60 and time.monotonic() < deadline:  # (several flushes: segments upload too)
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert acked >= 60, proc.stderr.read()
    with s3_db.open("after") as db:
        ids = set(db.open_table("t").to_arrow()["id"].to_pylist())
    assert set(range((acked + 1) * 20)) <= ids


def test_a_second_writer_takes_over_and_the_first_is_fenced(s3_db: S3Database) -> None:
    first = s3_db.open("machine-a")
    table_a = first.create_table("t", _rows(range(10)))
    table_a.add(_rows(range(10, 20), seed=1))
    second = s3_db.open("machine-b")
    table_b = second.open_table("t")  # takes over: the first writer's epoch is sealed
    assert _ids(table_b) == list(range(20))
    with pytest.raises(omendb.CommitConflictError, match="took table 't' over"):
        table_a.add(_rows([100], seed=3))
    with pytest.raises(omendb.ReadOnlyError, match="takes no more writes"):
        table_a.add(_rows([101], seed=3))
    table_b.add(_rows([200], seed=4))
    second.close()
    first.close()
    with s3_db.open("machine-c") as db:
        assert _ids(db.open_table("t")) == [*range(20), 200]  # nothing of the loser's refused writes


def test_two_machines_creating_one_table_get_one_table(s3_db: S3Database) -> None:
    with s3_db.open("a") as a, s3_db.open("b") as b:
        a.create_table("t", dim=DIM)
        with pytest.raises(omendb.TableExistsError, match="already exists"):
            b.create_table("t", dim=DIM)


def test_a_reader_follows_flush_compaction_and_cleanup(s3_db: S3Database) -> None:
    writer_db = s3_db.open("writer", keep_versions_for=None, compaction=False)
    table = writer_db.create_table("t", _rows(range(50)))
    table.flush()
    reader_db = s3_db.open("reader", read_only=True, poll_interval=3600)
    reader = reader_db.open_table("t")
    assert reader.count() == 50
    for start in (50, 100, 150):
        table.add(_rows(range(start, start + 50), seed=start))
        table.flush()
    assert reader.count() == 50, "no poll yet: the reader reads its version"
    assert reader.refresh() == table.version and reader.count() == 200
    table.compact()
    report = table.cleanup(keep_last=1)
    assert report["versions_removed"] >= 4
    assert len([k for k in s3_db.keys("db/t/manifests/")]) == 1
    assert reader.count() == 200  # its mapped files stay readable
    reader.refresh()
    assert reader.version == table.version and _ids(reader) == list(range(200))
    with pytest.raises(omendb.ReadOnlyError):
        reader.add(_rows([1000]))
    reader_db.close()
    writer_db.close()


def test_a_reader_cache_stays_within_cache_bytes(s3_db: S3Database) -> None:
    writer_db = s3_db.open("writer", keep_versions_for=None, compaction=False)
    table = writer_db.create_table("t", _rows(range(100)))
    table.flush()
    reader_db = s3_db.open("reader", read_only=True, cache_bytes=0, poll_interval=3600)
    reader = reader_db.open_table("t")
    cache = s3_db.tmp / "reader" / "reader" / "t" / "segments"
    for start in (100, 200):
        table.add(_rows(range(start, start + 100), seed=start))
        table.flush()
    table.compact()
    reader.refresh()
    in_use = {f for e in reader.core.state.manifest.segments for f in e.files()}
    assert {p.name for p in cache.iterdir() if not p.name.startswith(".")} == in_use
    assert _ids(reader) == list(range(300))
    reader_db.close()
    writer_db.close()


def test_checkout_of_an_old_version_fetches_its_files(s3_db: S3Database) -> None:
    with s3_db.open("a", keep_versions_for=None) as db:
        table = db.create_table("t", _rows(range(30)))
        table.flush()
        first = table.version
        table.delete(where="id < 10")
        table.compact()
    with s3_db.open("b", read_only=True) as db:
        table = db.open_table("t")
        assert table.count() == 20
        assert table.checkout(first).count() == 30


def test_drop_table_removes_its_objects(s3_db: S3Database) -> None:
    with s3_db.open() as db:
        db.create_table("gone", _rows(range(5))).flush()
        db.create_table("kept", _rows(range(5)))
        db.drop_table("gone")
        assert db.table_names() == ["kept"]
        assert not s3_db.keys("db/gone/")
        db.create_table("gone", dim=DIM)  # the old table's cached copy does not come back
        assert db.open_table("gone").count() == 0


@pytest.mark.parametrize("options, error, match", [
    ({"no_such_option": 1}, omendb.InvalidArgumentError, "unknown option 'no_such_option'"),
    ({"read_timeout": -1}, omendb.InvalidArgumentError, "read_timeout"),
])
def test_bad_storage_options_are_refused_by_name(s3_db: S3Database, options, error, match) -> None:
    with pytest.raises(error, match=match):
        omendb.open(s3_db.uri, storage_options={**s3_db.server.options, **options}, cache_dir=s3_db.tmp / "c")


def test_store_faults_get_clear_errors_naming_the_store(s3_db: S3Database, tmp_path) -> None:
    with pytest.raises(omendb.ObjectStoreError, match="bucket 'no-such-bucket-x' does not exist"):
        omendb.open("s3://no-such-bucket-x/db", storage_options=s3_db.server.options, cache_dir=tmp_path / "c")
    unreachable = {**s3_db.server.options, "endpoint_url": "http://127.0.0.1:9", "connect_timeout": 1,
                   "max_attempts": 2}
    started = time.monotonic()
    with pytest.raises(omendb.ObjectStoreError, match=r"s3://x/db|s3://x: .*(unreachable|failed)"):
        omendb.open("s3://x/db", storage_options=unreachable, cache_dir=tmp_path / "c")
    assert time.monotonic() - started < 30
    with pytest.raises(omendb.NotADatabaseError, match="no omendb database here"):
        omendb.open(f"s3://{s3_db.bucket}/empty", storage_options=s3_db.server.options, read_only=True,
                    cache_dir=tmp_path / "r")
    with pytest.raises(omendb.InvalidArgumentError, match="s3://bucket/prefix"):
        omendb.open("s3:///db", storage_options=s3_db.server.options)
    with pytest.raises(omendb.InvalidArgumentError, match="for s3:// databases"):
        omendb.open(tmp_path / "local", storage_options=s3_db.server.options)


def test_a_write_the_store_refuses_is_not_acknowledged_and_stops_writes(s3_server, tmp_path) -> None:
    from conftest import S3Server

    own = S3Server()  # (a server of its own, to stop)
    try:
        bucket = own.new_bucket()
        options = {**own.options, "connect_timeout": 1, "read_timeout": 2, "max_attempts": 2}
        db = omendb.open(f"s3://{bucket}/db", storage_options=options, cache_dir=tmp_path / "c")
        table = db.create_table("t", _rows(range(10)))
        own.stop()
        started = time.monotonic()
        with pytest.raises(omendb.ObjectStoreError, match=rf"s3://{bucket}/db/t/wal/.*failed"):
            table.add(_rows([10], seed=1))
        assert time.monotonic() - started < 30
        assert _ids(table) == list(range(10)), "the refused write is not visible"
        with pytest.raises(omendb.ReadOnlyError, match="did not confirm log record"):
            table.add(_rows([11], seed=1))
        table.core.closing = True  # (the store is gone: close without the flush that would upload)
    finally:
        own.stop()


def _cli(s3_db: S3Database, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_db.server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "OMENDB_CACHE_DIR": str(s3_db.tmp / "cli")}
    proc = subprocess.run([sys.executable, "-m", "omendb.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_cli_takes_s3_uris(s3_db: S3Database) -> None:
    import json

    import pyarrow.parquet as pq

    rows = _rows(range(300))
    pq.write_table(rows, s3_db.tmp / "rows.parquet")
    np.save(s3_db.tmp / "q.npy", _vectors(300)[42:43])
    _cli(s3_db, "ingest", s3_db.tmp / "rows.parquet", "--db", s3_db.uri, "--table", "docs")
    hits = json.loads(_cli(s3_db, "search", "--db", s3_db.uri, "--table", "docs", "-q", s3_db.tmp / "q.npy",
                           "-k", "1", "--json").stdout.splitlines()[0])
    assert hits["id"] == 42 and hits["_distance"] == pytest.approx(0, abs=1e-4)
    (docs,) = json.loads(_cli(s3_db, "info", "--db", s3_db.uri, "--json").stdout)["tables"]
    assert docs["table"] == "docs" and docs["rows"] == 300
    _cli(s3_db, "compact", "--db", s3_db.uri, "--table", "docs")
    _cli(s3_db, "export", "--db", s3_db.uri, "--table", "docs", "-o", s3_db.tmp / "out.parquet")
    assert sorted(pq.read_table(s3_db.tmp / "out.parquet")["id"].to_pylist()) == list(range(300))


def test_serve_takes_an_s3_uri(s3_db: S3Database) -> None:
    from conftest import free_port

    port = free_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_db.server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "OMENDB_CACHE_DIR": str(s3_db.tmp / "srv")}
    proc = subprocess.Popen([sys.executable, "-m", "omendb.server", s3_db.uri, "--host", "127.0.0.1", "--port",
                             str(port), "--http-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert f"omendb serving {s3_db.uri} on" in line, line + proc.stderr.read()
        client = omendb.connect(f"grpc://127.0.0.1:{port}")
        table = client.create_table("t", _rows(range(40)))
        assert table.search(_vectors(40)[9], k=1)["id"].to_pylist() == [9]
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    with s3_db.open("after") as db:
        assert _ids(db.open_table("t")) == list(range(40))
