"""Bad input gets a specific omendb error naming the problem, and never changes stored data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import omendb
from omendb import errors

DIM = 8
SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), DIM)),
                    pa.field("lang", pa.string()), pa.field("cluster", pa.int64())])


def _snapshot(table: omendb.Table) -> list[dict]:
    return sorted(table.to_arrow().to_pylist(), key=lambda r: r["id"])


class Populated:
    """A database with table ``docs``: 20 rows in a segment, 10 deleted-from, 15 in the WAL/memtable."""

    def __init__(self, path: Path, rng: np.random.Generator) -> None:
        self.path = path
        self.db = omendb.open(path)
        self.table = self.db.create_table("docs", schema=SCHEMA)
        vectors = rng.normal(size=(35, DIM)).astype(np.float32)
        langs = ["en", "de", "fr"]
        self.table.add({"id": np.arange(20), "vector": vectors[:20],
                        "lang": [langs[i % 3] for i in range(20)], "cluster": np.arange(20) % 4})
        self.table.flush()
        self.table.delete([2, 3])
        self.table.add({"id": np.arange(20, 35), "vector": vectors[20:],
                        "lang": [langs[i % 3] for i in range(20, 35)], "cluster": np.arange(20, 35) % 4})
        self.vectors = vectors
        self.before = _snapshot(self.table)
        self.names = self.db.table_names()
        assert len(self.before) == 33

    def assert_unchanged(self) -> None:
        """Same rows now, and after closing and reopening the database."""
        assert self.table.count() == 33
        assert _snapshot(self.table) == self.before
        assert self.db.table_names() == self.names
        self.db.close()
        self.db = omendb.open(self.path)
        self.table = self.db.open_table("docs")
        assert self.db.table_names() == self.names
        assert self.table.count() == 33
        assert _snapshot(self.table) == self.before
        # and the table still takes good writes afterwards
        assert self.table.add({"id": [1000], "vector": np.ones((1, DIM), np.float32)}) == 1
        assert self.table.count() == 34


@pytest.fixture
def pop(db_path: Path, rng: np.random.Generator):
    populated = Populated(db_path, rng)
    yield populated
    populated.db.close()


def good_rows(n: int = 2, first_id: int = 500, dim: int = DIM) -> dict:
    return {"id": np.arange(first_id, first_id + n), "vector": np.ones((n, dim), np.float32),
            "lang": ["en"] * n, "cluster": [1] * n}


# ====================================================================== vectors
@pytest.mark.parametrize("method", ["add", "upsert"])
@pytest.mark.parametrize("dim", [DIM - 1, DIM + 3])
def test_wrong_dimension(pop, method, dim) -> None:
    with pytest.raises(errors.DimensionError, match=f"{dim} components") as info:
        getattr(pop.table, method)(good_rows(dim=dim))
    assert str(DIM) in str(info.value)
    pop.assert_unchanged()


def test_wrong_dimension_in_one_row_of_many(pop) -> None:
    rows = [{"id": 600 + i, "vector": [0.5] * DIM} for i in range(5)]
    rows[3]["vector"] = [0.5] * (DIM + 1)
    with pytest.raises(errors.DimensionError, match="row 3"):
        pop.table.add(rows)
    pop.assert_unchanged()


def test_wrong_dimension_numpy_array(pop) -> None:
    with pytest.raises(errors.DimensionError, match=str(DIM)):
        pop.table.add(np.ones((4, DIM * 2), np.float32))
    pop.assert_unchanged()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_vectors(pop, bad) -> None:
    rows = good_rows(3)
    rows["vector"][1, 4] = bad
    with pytest.raises(errors.InvalidVectorError, match="row 1 contains NaN or infinity"):
        pop.table.add(rows)
    # pandas turns NaN inside a list column into a null on the way to Arrow
    with pytest.raises(errors.InvalidVectorError, match="NaN or infinity|null component"):
        pop.table.upsert(pd.DataFrame({"id": [0], "vector": [rows["vector"][1]]}))
    pop.assert_unchanged()


def test_huge_finite_components_are_not_mistaken_for_infinity(db_path: Path) -> None:
    # the finiteness check sums the components first; this sum overflows float32
    with omendb.open(db_path) as db:
        table = db.create_table("big", dim=DIM)
        table.add({"id": [1, 2], "vector": np.full((2, DIM), 3e38, np.float32)})
        assert table.count() == 2
        with pytest.raises(errors.InvalidVectorError, match="row 1 contains NaN or infinity"):
            table.add({"id": [3, 4], "vector": np.vstack([np.full(DIM, 3e38, np.float32),
                                                         np.full(DIM, np.inf, np.float32)])})
        assert table.count() == 2


@pytest.mark.parametrize("data", [
    {"vector": [["a"] * DIM]},
    [{"vector": ["x"] * DIM}],
    [[1.0, 2.0, "x"] + [0.0] * (DIM - 3)],
    np.array([["a"] * DIM]),
    {"vector": ["not a list"]},
], ids=["dict-strings", "rows-strings", "list-mixed", "numpy-strings", "scalar-strings"])
def test_non_numeric_vectors(pop, data) -> None:
    with pytest.raises(errors.InvalidVectorError, match="numbers|numeric"):
        pop.table.add(data)
    pop.assert_unchanged()


def test_ragged_vectors(pop) -> None:
    with pytest.raises(errors.InvalidVectorError, match="ragged"):
        pop.table.add([[0.1] * DIM, [0.1] * (DIM - 1)])
    pop.assert_unchanged()


def test_ragged_vectors_in_new_table(pop) -> None:
    rows = [{"vector": [1.0, 2.0, 3.0]}, {"vector": [1.0, 2.0]}]
    with pytest.raises(errors.InvalidVectorError, match="ragged"):
        pop.db.create_table("ragged", data=rows)
    assert "ragged" not in pop.db
    assert not (pop.path / "ragged").exists()
    pop.assert_unchanged()


def test_null_vectors(pop) -> None:
    with pytest.raises(errors.InvalidVectorError, match="null vector at row 1"):
        pop.table.add([{"id": 700, "vector": [0.0] * DIM}, {"id": 701}])
    with pytest.raises(errors.InvalidVectorError, match="null component"):
        pop.table.add({"id": [702], "vector": [[0.0] * (DIM - 1) + [None]]})
    pop.assert_unchanged()


# ====================================================================== columns
def test_unknown_column(pop) -> None:
    rows = good_rows()
    rows["colour"] = ["red", "blue"]
    with pytest.raises(errors.SchemaError, match="'colour'"):
        pop.table.add(rows)
    with pytest.raises(errors.SchemaError, match="'colour'"):
        pop.table.upsert(rows)
    pop.assert_unchanged()


def test_missing_vector_column(pop) -> None:
    with pytest.raises(errors.SchemaError, match="missing vector column 'vector'"):
        pop.table.add({"id": [800], "lang": ["en"]})
    pop.assert_unchanged()


def test_missing_vector_column_in_new_table(pop) -> None:
    with pytest.raises(errors.SchemaError, match="vector"):
        pop.db.create_table("novec", data={"id": [1, 2], "emb": [[1.0], [2.0]]})
    assert "novec" not in pop.db
    pop.assert_unchanged()


@pytest.mark.parametrize("column, values", [("cluster", ["abc", "def"]), ("cluster", [1.5, 2.0]),
                                            ("id", ["x", "y"]), ("lang", [[1], [2]])])
def test_wrong_column_type(pop, column, values) -> None:
    rows = good_rows()
    rows[column] = values
    with pytest.raises(errors.SchemaError, match=f"'{column}'"):
        pop.table.add(rows)
    pop.assert_unchanged()


# ========================================================================== keys
def test_duplicate_ids_within_a_batch(pop) -> None:
    rows = good_rows(4)
    rows["id"] = np.array([900, 901, 900, 902])
    with pytest.raises(errors.DuplicateKeyError, match="900"):
        pop.table.add(rows)
    with pytest.raises(errors.DuplicateKeyError, match="900"):
        pop.table.upsert(rows)
    pop.assert_unchanged()


@pytest.mark.parametrize("existing", [5, 25], ids=["in-segment", "in-memtable"])
def test_duplicate_id_vs_existing(pop, existing) -> None:
    rows = good_rows(3)
    rows["id"] = np.array([950, existing, 951])
    with pytest.raises(errors.DuplicateKeyError, match=str(existing)):
        pop.table.add(rows)
    pop.assert_unchanged()


def test_duplicate_ids_in_new_table(pop) -> None:
    data = {"id": [1, 2, 1], "vector": np.ones((3, 4), np.float32)}
    with pytest.raises(errors.DuplicateKeyError, match="1"):
        pop.db.create_table("dups", data=data)
    assert "dups" not in pop.db
    assert not (pop.path / "dups").exists()
    pop.assert_unchanged()


def test_wrong_id_type_for_get_and_delete(pop) -> None:
    with pytest.raises(errors.SchemaError, match="ids"):
        pop.table.delete(["five"])
    with pytest.raises(errors.SchemaError, match="ids"):
        pop.table.get(["five"])
    pop.assert_unchanged()


def test_integers_too_large_for_64_bits(pop) -> None:
    huge = 2 ** 70
    with pytest.raises(errors.SchemaError, match="too large for 64 bits"):
        pop.table.delete([huge])
    with pytest.raises(errors.SchemaError, match="too large for 64 bits"):
        pop.table.get([5, huge])
    with pytest.raises(errors.SchemaError, match="column 'id' holds an integer too large for 64 bits"):
        pop.table.add({"id": [huge], "vector": np.ones((1, DIM), np.float32)})
    with pytest.raises(errors.SchemaError, match="column 'cluster' holds an integer too large for 64 bits"):
        pop.table.upsert([{"id": 1, "vector": [1.0] * DIM, "cluster": huge}])
    pd = pytest.importorskip("pandas")
    with pytest.raises(errors.SchemaError, match="column 'id' holds an integer too large for 64 bits"):
        pop.table.add(pd.DataFrame({"id": [huge], "vector": [np.ones(DIM, np.float32)]}))
    pop.assert_unchanged()


# ======================================================================== tables
@pytest.mark.parametrize("action", ["open_table", "drop_table", "getitem"])
def test_missing_table(pop, action) -> None:
    with pytest.raises(errors.TableNotFoundError, match="nope") as info:
        if action == "getitem":
            pop.db["nope"]
        else:
            getattr(pop.db, action)("nope")
    assert isinstance(info.value, KeyError)
    pop.assert_unchanged()


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "..", "-dash", "a b", "x" * 129, "docs/..", 7])
def test_invalid_table_name(pop, name) -> None:
    outside = sorted(p.name for p in pop.path.parent.iterdir())
    for action in ("create_table", "open_table", "drop_table"):
        with pytest.raises(errors.InvalidNameError, match="invalid table name") as info:
            if action == "create_table":
                pop.db.create_table(name, dim=DIM)
            else:
                getattr(pop.db, action)(name)
        assert repr(name)[:20] in str(info.value)
    assert name not in pop.db
    assert sorted(p.name for p in pop.path.parent.iterdir()) == outside
    pop.assert_unchanged()


def test_create_existing_table(pop) -> None:
    with pytest.raises(errors.TableExistsError, match="docs"):
        pop.db.create_table("docs", dim=3)
    with pytest.raises(errors.TableExistsError, match="docs"):
        pop.db.create_table("docs", data=np.ones((2, 3)))
    pop.assert_unchanged()


def test_bad_create_arguments(pop) -> None:
    with pytest.raises(ValueError, match="metric"):
        pop.db.create_table("m", dim=4, metric="manhattan")
    with pytest.raises(ValueError, match="dim"):
        pop.db.create_table("m", dim=0)
    with pytest.raises(ValueError):
        pop.db.create_table("m")
    with pytest.raises(errors.DimensionError, match="dim"):
        pop.db.create_table("m", schema=SCHEMA, dim=DIM + 1)
    with pytest.raises(errors.SchemaError, match="reserved"):
        pop.db.create_table("m", data={"vector": np.ones((2, 3)), "_secret": [1, 2]})
    assert "m" not in pop.db
    pop.assert_unchanged()


# ================================================================== where & query
BAD_WHERES = ["no_such_column = 1", "lang = ", "x=1; DROP TABLE t", "id = 1); DROP TABLE t; SELECT (1",
              "vector IS NULL", "id IN (SELECT 1 FROM read_csv('/etc/passwd'))", "", "   "]


@pytest.mark.parametrize("where", BAD_WHERES)
def test_invalid_where_in_search(pop, where) -> None:
    with pytest.raises(errors.FilterError):
        pop.table.search(pop.vectors[0], k=5, where=where)
    pop.assert_unchanged()


@pytest.mark.parametrize("where", BAD_WHERES)
def test_invalid_where_in_delete(pop, where) -> None:
    with pytest.raises(errors.FilterError):
        pop.table.delete(where=where)
    pop.assert_unchanged()


def test_filter_error_names_the_problem(pop) -> None:
    with pytest.raises(errors.FilterError, match="no_such_column"):
        pop.table.search(pop.vectors[0], where="no_such_column = 1")
    with pytest.raises(errors.FilterError, match="DROP TABLE"):
        pop.table.delete(where="x=1; DROP TABLE t")


@pytest.mark.parametrize("where", ["id = 0) UNION SELECT (5", "false) UNION SELECT (99999", "true) LIMIT (1"])
def test_where_cannot_escape_its_predicate(pop, where) -> None:
    # A where string must be one predicate; closing the parenthesis to append more SQL
    # must be refused, not run (which returns rows that do not match, or crashes).
    with pytest.raises(errors.FilterError):
        pop.table.search(pop.vectors[0], k=5, where=where)
    pop.assert_unchanged()


def test_invalid_where_on_empty_table(db_path: Path) -> None:
    # A typo in a filter is reported even before the table holds rows.
    with omendb.open(db_path) as db:
        table = db.create_table("empty", schema=SCHEMA)
        with pytest.raises(errors.FilterError, match="no_such_column"):
            table.search(np.ones(DIM), where="no_such_column = 1")
        with pytest.raises(errors.FilterError):
            table.search(np.ones(DIM), where="x=1; DROP TABLE t")


@pytest.mark.parametrize("query, error, message", [
    (np.ones(DIM - 1), errors.DimensionError, "components"),
    (np.ones((2, DIM + 1)), errors.DimensionError, "components"),
    (np.full(DIM, np.nan), errors.InvalidVectorError, "NaN"),
    (np.ones((2, 2, DIM)), errors.InvalidVectorError, "1-D"),
    (["a"] * DIM, errors.InvalidVectorError, "numeric"),
])
def test_bad_queries(pop, query, error, message) -> None:
    with pytest.raises(error, match=message):
        pop.table.search(query, k=3)
    pop.assert_unchanged()


def test_unknown_columns_requested(pop) -> None:
    with pytest.raises(errors.SchemaError, match="'nope'"):
        pop.table.search(pop.vectors[0], columns=["id", "nope"])
    with pytest.raises(errors.SchemaError, match="'nope'"):
        pop.table.get([1], columns=["nope"])
    for bad in (5, [["id"]], ["id", 3]):
        with pytest.raises(errors.SchemaError, match="list of column names"):
            pop.table.search(pop.vectors[0], columns=bad)
    pop.assert_unchanged()


def test_empty_and_unsupported_data(pop) -> None:
    with pytest.raises(errors.SchemaError, match="no rows"):
        pop.table.add([])
    with pytest.raises(TypeError, match="cannot add data"):
        pop.table.add("not data")
    with pytest.raises(TypeError, match="cannot add data"):
        pop.table.add(42)
    pop.assert_unchanged()


# ====================================================================== folders
def test_non_omendb_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8 not a database")
    with pytest.raises(errors.NotADatabaseError, match="photos") as info:
        omendb.open(folder)
    assert "not empty" in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]  # nothing written into it
    assert (folder / "cat.jpg").read_bytes() == b"\xff\xd8 not a database"


def test_file_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(errors.NotADatabaseError, match="data.csv"):
        omendb.open(path)
    assert path.read_text() == "a,b\n1,2\n"


def test_foreign_or_damaged_marker(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "omendb.json").write_text('{"format": "something-else"}')
    with pytest.raises(errors.NotADatabaseError, match="omendb.json"):
        omendb.open(other)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "omendb.json").write_text("{not json")
    with pytest.raises(errors.CorruptFileError, match="omendb.json"):
        omendb.open(damaged)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "omendb.json").write_text('{"format": "omendb.database", "format_version": 9}')
    with pytest.raises(errors.FormatVersionError, match="9"):
        omendb.open(newer)


def test_all_errors_are_omen_errors() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.OmenError)
        assert getattr(omendb, name) is getattr(errors, name)
    assert issubclass(omendb.TableLockedError, errors.OmenError)


def test_refused_writes_leave_the_log_as_it_was(db_path: Path, tmp_path: Path) -> None:
    """A write refused after its log record was begun (NaN, an existing id) cuts the record
    off again: the log's bytes are unchanged, and a crash right after recovers the good rows."""
    with omendb.open(db_path) as db:
        table = db.create_table("docs", schema=SCHEMA)
        table.add(good_rows(3, first_id=1))
        (wal,) = (db_path / "docs" / "wal").glob("*.wal")
        logged = wal.read_bytes()
        vectors = np.ones((400, DIM), np.float32)
        vectors[399, 0] = np.nan
        with pytest.raises(errors.InvalidVectorError, match="row 399 contains NaN"):
            table.add({"id": np.arange(100, 500), "vector": vectors})
        with pytest.raises(errors.DuplicateKeyError, match=r"already exist.*\[2\]"):
            table.add(good_rows(1, first_id=2))
        assert wal.read_bytes() == logged
        table.add(good_rows(2, first_id=10))
        crashed = tmp_path / "crashed"  # the files as a SIGKILL now would leave them (all synced)
        shutil.copytree(db_path, crashed)
    with omendb.open(crashed) as db:
        assert sorted(db.open_table("docs").to_arrow().column("id").to_pylist()) == [1, 2, 3, 10, 11]


# ================================================== what an outside attack found (issue 15)
def _bad_utf8(n_good: int = 1) -> pa.Array:
    """A string array whose last value is not UTF-8 (Arrow accepts it until validated)."""
    texts = [b"ok"] * n_good + [b"\xff\xfe"]
    offsets = np.cumsum([0] + [len(t) for t in texts]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(texts), [None, pa.py_buffer(offsets.tobytes()),
                                                           pa.py_buffer(b"".join(texts))])


def test_invalid_utf8_is_refused_naming_column_and_row(pop) -> None:
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(3 * DIM, np.float32)), DIM)
    bad = pa.table({"id": pa.array([600, 601, 602], pa.int64()), "vector": vectors, "lang": _bad_utf8(2),
                    "cluster": pa.array([1, 1, 1], pa.int64())})
    for write in (pop.table.add, pop.table.upsert):
        with pytest.raises(errors.SchemaError, match=r"column 'lang': row 2 is not valid UTF-8"):
            write(bad)
    with pytest.raises(errors.SchemaError, match="UTF-8"):
        pop.db.create_table("u", data=bad)
    assert "u" not in pop.db
    pop.assert_unchanged()


def test_invalid_utf8_string_keys_are_refused(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        table = db.create_table("s", data={"id": ["a", "b"], "vector": np.ones((2, DIM))})
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(2 * DIM, np.float32)), DIM)
        with pytest.raises(errors.SchemaError, match="column 'id': row 1 is not valid UTF-8"):
            table.add(pa.table({"id": _bad_utf8(1), "vector": vectors}))
        for lookup in (table.get, table.delete):
            with pytest.raises(errors.SchemaError, match="UTF-8"):
                lookup(_bad_utf8(1))
        assert table.to_arrow().to_pylist()[0]["id"] == "a" and table.count() == 2


@pytest.mark.parametrize("rows, message", [
    ([{"id": 600, "vector": [0.0] * DIM, "lang": 5}], "column 'lang' is string; the data gives int64"),
    ([{"id": "601", "vector": [0.0] * DIM}], "column 'id' is int64; the data gives string"),
    ([{"id": 602, "vector": [0.0] * DIM, "cluster": 1.5}], "column 'cluster' is int64; the data gives double"),
    ([{"id": 603, "vector": [0.0] * DIM, "cluster": True}], "column 'cluster' is int64; the data gives bool"),
])
def test_values_of_another_kind_are_refused_not_converted(pop, rows, message) -> None:
    with pytest.raises(errors.SchemaError, match=message):
        pop.table.add(rows)
    pop.assert_unchanged()


def test_lossless_numeric_widening_is_still_accepted(pop) -> None:
    pop.table.add({"id": np.array([700], np.int32), "vector": np.ones((1, DIM), np.float16),
                   "cluster": np.array([3], np.int8)})
    assert pop.table.get([700])["cluster"].to_pylist() == [3]


def test_string_keys_are_not_given_as_numbers(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        table = db.create_table("s", data={"id": ["5", "b"], "vector": np.ones((2, DIM))})
        with pytest.raises(errors.SchemaError, match="column 'id' is string; the data gives int64"):
            table.add({"id": [5], "vector": np.ones((1, DIM))})
        for lookup in (table.get, table.delete):
            with pytest.raises(errors.SchemaError, match="ids must be string values"):
                lookup([5])
        assert table.get(["5"])["id"].to_pylist() == ["5"] and table.count() == 2


@pytest.mark.parametrize("query", [np.ones(DIM) * (1 + 1j), [complex(1, 2)] * DIM])
def test_complex_queries_are_refused(pop, query) -> None:
    with pytest.raises(errors.InvalidVectorError, match="complex"):
        pop.table.search(query, k=3)


@pytest.mark.parametrize("query", [[], np.zeros(0), np.zeros((1, 0))])
def test_empty_queries_are_refused_by_name(pop, query) -> None:
    with pytest.raises(errors.DimensionError, match="no components"):
        pop.table.search(query, k=3)


@pytest.mark.parametrize("where", ["__omendb_row > 0", "__omendb_row IS NOT NULL", "rowid > 0"])
def test_where_sees_only_the_tables_columns(pop, where) -> None:
    with pytest.raises(errors.FilterError):
        pop.table.search(pop.vectors[0], k=3, where=where)
    with pytest.raises(errors.FilterError):
        pop.table.delete(where=where)
    pop.assert_unchanged()


@pytest.mark.parametrize("where", ["count(*) > 0", "row_number() OVER () < 3"])
def test_where_is_a_condition_on_each_row(pop, where) -> None:
    with pytest.raises(errors.FilterError, match="aggregates|window"):
        pop.table.search(pop.vectors[0], k=3, where=where)


def test_where_over_a_column_named_like_a_pseudo_column(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        table = db.create_table("t", data={"vector": np.eye(3, DIM), "rowid": [10, 20, 30]})
        assert table.search(np.ones(DIM), k=3, where="rowid >= 20")["rowid"].to_pylist() in ([20, 30], [30, 20])


@pytest.mark.parametrize("name", ["docs\n", "docs\r", "\ndocs", "do\ncs", "docs\x00"])
def test_table_names_with_line_breaks_or_nul_are_invalid(pop, name) -> None:
    with pytest.raises(errors.InvalidNameError):
        pop.db.create_table(name, dim=4)
    assert sorted(p.name for p in pop.path.iterdir() if not p.name.startswith(".")) == ["docs", "omendb.json"]
    pop.assert_unchanged()


@pytest.mark.parametrize("kwargs", [{"dim": 10**9}, {"dim": 65_537},
                                    {"schema": pa.schema([pa.field("vector", pa.list_(pa.float32(), 10**7))])}])
def test_absurd_dimensions_are_refused_up_front(pop, kwargs) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="dim"):
        pop.db.create_table("big", **kwargs)
    assert "big" not in pop.db and not (pop.path / "big").exists()
    pop.assert_unchanged()


@pytest.mark.parametrize("kwargs", [{"memtable_bytes": 0}, {"memtable_bytes": -1}, {"memtable_bytes": 1.5},
                                    {"memtable_bytes": 1 << 50}, {"lock_timeout": -1},
                                    {"lock_timeout": float("nan")}, {"fsync": "yes"}, {"compaction": "on"}])
def test_bad_open_options_are_refused(db_path: Path, kwargs) -> None:
    with pytest.raises(errors.OmenError, match=next(iter(kwargs))):
        omendb.open(db_path, **kwargs)
    assert not db_path.exists()


def _argument_errors(pop) -> list:
    t, db, q = pop.table, pop.db, pop.vectors[0]
    return [
        lambda: t.search(q, k=0), lambda: t.search(q, k=-3), lambda: t.search(q, k="10"),
        lambda: t.search(q, k=2.5), lambda: t.search(q, ef=0), lambda: t.search(q, ef="x"),
        lambda: t.search(q, where=5), lambda: t.search([]), lambda: t.search(None),
        lambda: t.search("not a vector"), lambda: t.get(None), lambda: t.get([1.5]),
        lambda: t.delete(), lambda: t.delete([1], where="id = 1"), lambda: t.add(None),
        lambda: t.add(42), lambda: t.upsert("x"), lambda: t.cleanup(keep_last=0),
        lambda: t.cleanup(keep_last="1"), lambda: t.checkout(10**6), lambda: t.checkout("v1"),
        lambda: t.create_index(m=1), lambda: t.create_index(ef_construction=0),
        lambda: t.create_index(m="16"), lambda: t.export(pop.path / "x.csv", "csv"),
        lambda: db.create_table("m", dim=4, metric="manhattan"), lambda: db.create_table("m", dim=0),
        lambda: db.create_table("m", dim=True), lambda: db.create_table("m"),
        lambda: db.create_table("m", dim=4, format="parquet"), lambda: db.create_table("m", schema="id int"),
        lambda: db.create_table(5, dim=4), lambda: db.open_table("../docs"), lambda: db.open_table("nope"),
        lambda: db.drop_table("nope"), lambda: omendb.HnswConfig(m=0), lambda: omendb.HnswConfig(ef_search=-1),
        lambda: omendb.CompactionPolicy(min_segments=1), lambda: omendb.CompactionPolicy(max_deleted_fraction=2),
        lambda: omendb.CompactionPolicy(max_rows=0), lambda: omendb.open(None), lambda: omendb.open(42),
        lambda: omendb.connect("http://127.0.0.1:1"), lambda: db.sql("SELECT * FROM omen_knn('nope', [1], 1)"),
    ]


def test_every_argument_error_is_an_omen_error_that_names_the_problem(pop) -> None:
    for call in _argument_errors(pop):
        with pytest.raises(errors.OmenError) as info:
            call()
        assert str(info.value).strip(), f"{call}: an error with no message"
        assert "Traceback" not in str(info.value)
    pop.assert_unchanged()


@pytest.mark.parametrize("kwargs", [{"m": 2**40}, {"m": 100_000}, {"ef_construction": 10**7}, {"ef_search": 2**40},
                                    {"min_rows": 2**62}])
def test_index_parameters_beyond_sane_limits_are_refused_before_publishing(pop, kwargs) -> None:
    with pytest.raises(errors.InvalidArgumentError, match=next(iter(kwargs))):
        omendb.HnswConfig(**kwargs)
    version = pop.table.version
    with pytest.raises(errors.InvalidArgumentError):
        pop.table.create_index(**{"m": 16, "ef_construction": 200, **kwargs})
    assert pop.table.version == version
    pop.assert_unchanged()


def test_an_index_config_passed_as_m_is_refused_with_the_way_to_pass_it(pop) -> None:
    version = pop.table.version
    with pytest.raises(errors.InvalidArgumentError, match=r"create_index\(index=HnswFlat"):
        pop.table.create_index(omendb.HnswFlat(min_rows=1_000))
    assert pop.table.version == version
    pop.assert_unchanged()


def test_huge_k_costs_no_more_than_the_rows(pop) -> None:
    hits = pop.table.search(pop.vectors[0], k=10**12)
    assert hits.num_rows == 33
    assert pop.table.search(pop.vectors[:3], k=10**9, where="lang = 'en'").num_rows == 3 * 11
    with pytest.raises(errors.InvalidArgumentError, match="ef"):
        pop.table.search(pop.vectors[0], k=3, ef=10**9)


@pytest.mark.parametrize("column", [pa.array(np.array([0.5, 1.5], np.float16)),
                                    pa.array([1, 2], pa.decimal256(40, 2))])
def test_column_types_duckdb_cannot_read_are_refused_at_creation(db_path: Path, column) -> None:
    with omendb.open(db_path) as db:
        with pytest.raises(errors.SchemaError, match="'score'.*DuckDB cannot read"):
            db.create_table("t", data={"id": [1, 2], "score": column, "vector": np.ones((2, DIM), np.float32)})
        assert "t" not in db
        table = db.create_table("f", data={"id": [1], "score": [0.5], "vector": np.ones((1, DIM))})
        table.add({"id": [2], "score": np.array([1.5], np.float16), "vector": np.ones((1, DIM))})  # widened
        assert table.search(np.ones(DIM), k=5, where="score > 1")["id"].to_pylist() == [2]


def test_a_struct_field_the_schema_lacks_is_refused(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        table = db.create_table("s", data={"id": [1], "meta": [{"a": 1}], "vector": np.ones((1, DIM))})
        with pytest.raises(errors.SchemaError, match="'meta'"):
            table.add({"id": [2], "meta": [{"a": 2, "secret": "x"}], "vector": np.ones((1, DIM))})
        assert table.count() == 1


def test_a_float_out_of_a_columns_range_is_refused_rounding_is_not(db_path: Path) -> None:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), DIM)),
                        pa.field("f32", pa.float32())])
    with omendb.open(db_path) as db:
        table = db.create_table("t", schema=schema)
        table.add({"id": [1], "vector": np.ones((1, DIM)), "f32": [0.1]})  # float32 precision: what the column is
        with pytest.raises(errors.SchemaError, match=r"'f32': row 1 holds 1e\+300, out of range"):
            table.add({"id": [2, 3], "vector": np.ones((2, DIM)), "f32": [1.0, 1e300]})
        assert table.count() == 1 and abs(table.get([1])["f32"][0].as_py() - 0.1) < 1e-7


@pytest.mark.parametrize("call", [
    lambda t: t.get(["\ud800"]), lambda t: t.delete(["\udcff"]),
    lambda t: t.search(np.ones(DIM), where="lang = '\ud800'"), lambda t: t.delete(where="lang = '\ud800'"),
    lambda t: t.add(pd.DataFrame({"id": [900], "vector": [np.ones(DIM)],
                                  "lang": pd.Series(["\ud800"], dtype=object)})),
    lambda t: t.add([{"id": 901, "vector": [0.0] * DIM, "lang": "\udfff"}]),
])
def test_text_that_is_not_unicode_is_refused(pop, call) -> None:
    with pytest.raises(errors.OmenError):
        call(pop.table)
    pop.assert_unchanged()
