"""The two-line API (add_batch / search / delete / get / count on the default table), embedded and remote."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import omendb
from conftest import TOKEN, Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("shorthand") / "db")
    yield srv
    srv.stop()


@pytest.fixture(params=["embedded", "remote"])
def make_db(request, tmp_path: Path, server):
    """A factory of fresh databases (remote: the server's, emptied of the default table)."""
    opened = []

    def make(**defaults):
        if request.param == "embedded":
            db = omendb.open(tmp_path / f"db{len(opened)}", **defaults)
        else:
            db = server.connect(**defaults)
            if "vectors" in db.table_names():
                db.drop_table("vectors")
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


def test_two_lines(make_db) -> None:
    db = make_db()
    vectors = np.random.default_rng(0).standard_normal((200, 12)).astype(np.float32)
    assert db.count() == 0
    ids = db.add_batch(vectors)
    assert ids == list(range(200))
    hits = db.search(vectors[17], k=10)
    assert isinstance(hits, pa.Table) and {"id", "_distance"} <= set(hits.column_names)
    assert hits["id"][0].as_py() == 17 and hits.num_rows == 10
    table = db.open_table("vectors")
    assert (table.dim, table.metric) == (12, "cosine")
    assert db.count() == 200


def test_ids_metadata_delete_get(make_db) -> None:
    db = make_db()
    vectors = np.random.default_rng(1).standard_normal((3, 4)).tolist()  # a list of vectors works too
    ids = db.add_batch(vectors, ids=[10, 20, 30], metadata={"tag": ["a", "b", "c"]})
    assert ids == [10, 20, 30]
    assert db.get([30, 10])["tag"].to_pylist() == ["c", "a"]
    assert db.search(vectors[1], k=1, where="tag = 'b'")["id"].to_pylist() == [20]
    assert db.delete([20, 99]) == 1 and db.count() == 2
    more = db.add_batch(pd.DataFrame({"vector": [np.ones(4)], "tag": ["d"]}))
    assert len(more) == 1 and db.count() == 3


def test_open_with_dim_and_metric(make_db) -> None:
    db = make_db(dim=4, metric="l2")
    db.add_batch(np.eye(4))
    assert db.open_table("vectors").metric == "l2"
    with pytest.raises(omendb.DimensionError):
        db.add_batch(np.ones((1, 5)))


def test_search_before_any_add_names_the_default_table(make_db) -> None:
    with pytest.raises(omendb.TableNotFoundError, match="vectors"):
        make_db().search(np.ones(4))


def test_connect_without_scheme_and_await_add_batch(server) -> None:
    db = omendb.connect(f"127.0.0.1:{server.port}", token=TOKEN)  # grpc:// assumed
    assert isinstance(db.table_names(), list)

    async def main() -> tuple[list, list]:
        adb = await omendb.connect_async(f"127.0.0.1:{server.port}", token=TOKEN)
        if "vectors" in await adb.table_names():
            await adb.drop_table("vectors")
        ids = await adb.add_batch(np.eye(6, dtype=np.float32))
        hits = await adb.search(np.eye(6)[2], k=1)
        await adb.close()
        return ids, hits["id"].to_pylist()

    assert asyncio.run(main()) == (list(range(6)), [2])
    with pytest.raises(ValueError, match="grpc"):
        omendb.connect("http://127.0.0.1:1")
