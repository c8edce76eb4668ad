"""The table contract (``omendb.Table``), asserted the same way against the embedded table
and the table of a real ``omendb serve`` subprocess on loopback."""

from __future__ import annotations

import inspect

import numpy as np
import pyarrow as pa
import pytest

import omendb
from conftest import served_vectors as vectors, unique
from omendb.remote import RemoteTable
from omendb.table import LocalTable

DIM = 8  # (conftest.SERVED_DIM)


# ------------------------------------------------------------- the API, both ways
@pytest.fixture(params=["embedded", "remote"])
def database(request, tmp_path, server):
    """The same Database API, embedded or through the server."""
    if request.param == "embedded":
        db = omendb.open(tmp_path / "db")
    else:
        db = server.connect()
    yield db
    db.close()


def test_create_add_search_get_delete(database) -> None:
    name = unique("docs")
    x = vectors(300)
    table = database.create_table(name, data={"vector": x, "lang": ["en", "de", "fr"] * 100}, metric="cosine")
    assert (table.dim, table.metric, table.count(), len(table)) == (DIM, "cosine", 300, 300)
    assert name in database and name in database.table_names()
    hits = table.search(x[7], k=3)
    assert isinstance(hits, pa.Table) and hits["id"][0].as_py() == 7
    assert hits.column_names == ["id", "vector", "lang", "_distance"]
    batch = table.search(x[:4], k=2, columns=["id"])
    assert batch.column_names == ["_query", "id", "_distance"] and batch.num_rows == 8
    filtered = table.search(x[0], k=5, where="lang = 'de'")
    assert set(filtered["lang"].to_pylist()) == {"de"} and filtered.num_rows == 5
    assert table.add({"vector": x[:2], "lang": ["xx", "xx"]}) == 2
    assert table.upsert({"id": [0], "vector": x[1:2], "lang": ["up"]}) == 1
    assert table.get([0, 301])["lang"].to_pylist() == ["up", "xx"]
    assert table.delete(where="lang = 'xx'") == 2
    assert table.delete([1, 2, 999_999]) == 2
    assert table.count() == 298
    exact = table.search(x[5], k=4, exact=True)["id"].to_pylist()
    assert exact[0] == 5
    assert table.to_arrow().num_rows == 298
    assert table.stats()["rows"] == 298
    database.drop_table(name)
    assert name not in database.table_names()


def test_empty_table_with_schema(database) -> None:
    name = unique("schema")
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), DIM)), ("n", pa.int64())])
    table = database.create_table(name, schema=schema, metric="l2")
    table.add([{"id": "a", "vector": vectors(1)[0].tolist(), "n": 1}])
    assert table.get(["a"])["n"].to_pylist() == [1]
    assert table.schema.field("id").type == pa.string()


@pytest.mark.parametrize("action, error", [
    (lambda db, t: t.add({"vector": vectors(1, 3)[:, :5]}), omendb.DimensionError),
    (lambda db, t: t.add({"id": [0], "vector": vectors(1)}), omendb.DuplicateKeyError),
    (lambda db, t: t.search(np.full(DIM, np.nan)), omendb.InvalidVectorError),
    (lambda db, t: t.search(vectors(1)[0], where="nosuch = 1"), omendb.FilterError),
    (lambda db, t: t.add({"vector": vectors(1), "bogus": [1]}), omendb.SchemaError),
    (lambda db, t: db.open_table("missing_table"), omendb.TableNotFoundError),
    (lambda db, t: db.create_table("../escape", dim=DIM), omendb.InvalidNameError),
    (lambda db, t: db.create_table(t.name, dim=DIM), omendb.TableExistsError),
])
def test_errors_are_the_same_types_with_the_servers_message(database, action, error) -> None:
    table = database.create_table(unique("err"), data={"vector": vectors(10)})
    with pytest.raises(error) as caught:
        action(database, table)
    assert str(caught.value)
    assert table.count() == 10  # nothing stored changed




@pytest.mark.parametrize("implementation", [LocalTable, RemoteTable])
def test_both_tables_implement_the_whole_contract(implementation) -> None:
    assert issubclass(implementation, omendb.Table)
    assert not inspect.isabstract(implementation), implementation.__abstractmethods__


def test_tables_of_either_kind_are_omendb_tables(database) -> None:
    table = database.create_table(unique("kind"), data={"vector": vectors(12), "lang": ["en", "de"] * 6})
    assert isinstance(table, omendb.Table)
    assert (table.name in database.table_names(), table.dim, table.metric, table.format) == (True, DIM, "l2", "arrow")
    assert (table.id_column, table.vector_column) == ("id", "vector")
    assert len(table) == table.count() == 12 and table.to_pandas().shape[0] == 12
    assert table.to_polars().height == 12
    version = table.version
    table.flush()
    assert table.version > version and table.versions()[-1]["version"] == table.version
    assert table.insert({"vector": vectors(2, 1), "lang": ["fr", "fr"]}).to_pylist() == [12, 13]
    report = table.compact()
    assert report["segments_after"] >= 1 and table.count() == 14
    table.create_index(m=8, ef_construction=40)
    assert table.wait_for_index(timeout=60) is True
    assert table.stats()["index"]["m"] == 8
