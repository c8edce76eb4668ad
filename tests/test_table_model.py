"""Random add/upsert/delete/flush/reopen sequences against a dict model (hypothesis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import omendb

# ===================================================================== stateful

_COMPONENT = st.integers(-4, 4).map(float)
_VECTOR = st.lists(_COMPONENT, min_size=4, max_size=4)
_TAG = st.sampled_from(["a", "b", "c"])
_SMALL_SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), 4)),
                           pa.field("tag", pa.string())])


class TableMachine(RuleBasedStateMachine):
    """Random add/upsert/delete/flush/reopen sequences against a dict model."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "db"
        self.db = omendb.open(self.path, memtable_bytes=1024, fsync=False)
        self.table = self.db.create_table("t", schema=_SMALL_SCHEMA)
        self.model: dict[int, tuple[list[float], str]] = {}

    def teardown(self) -> None:
        self.db.close()
        self.tmp.cleanup()

    def _rows(self, ids, vectors, tags):
        return [{"id": i, "vector": v, "tag": t} for i, v, t in zip(ids, vectors, tags)]

    @rule(ids=st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True), data=st.data())
    def add(self, ids, data) -> None:
        vectors = data.draw(st.lists(_VECTOR, min_size=len(ids), max_size=len(ids)))
        tags = data.draw(st.lists(_TAG, min_size=len(ids), max_size=len(ids)))
        clash = [i for i in ids if i in self.model]
        if clash:
            with pytest.raises(omendb.DuplicateKeyError):
                self.table.add(self._rows(ids, vectors, tags))
        else:
            assert self.table.add(self._rows(ids, vectors, tags)) == len(ids)
            for i, v, t in zip(ids, vectors, tags):
                self.model[i] = (v, t)

    @rule(ids=st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True), data=st.data())
    def upsert(self, ids, data) -> None:
        vectors = data.draw(st.lists(_VECTOR, min_size=len(ids), max_size=len(ids)))
        tags = data.draw(st.lists(_TAG, min_size=len(ids), max_size=len(ids)))
        assert self.table.upsert(self._rows(ids, vectors, tags)) == len(ids)
        for i, v, t in zip(ids, vectors, tags):
            self.model[i] = (v, t)

    @rule(ids=st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True))
    def delete(self, ids) -> None:
        expected = len([i for i in ids if i in self.model])
        assert self.table.delete(ids) == expected
        for i in ids:
            self.model.pop(i, None)

    @rule(tag=_TAG)
    def delete_where(self, tag) -> None:
        victims = [i for i, (_, t) in self.model.items() if t == tag]
        assert self.table.delete(where=f"tag = '{tag}'") == len(victims)
        for i in victims:
            del self.model[i]

    @rule()
    def flush(self) -> None:
        self.table.flush()

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = omendb.open(self.path, memtable_bytes=1024, fsync=False)
        self.table = self.db.open_table("t")

    @invariant()
    def same_rows(self) -> None:
        assert self.table.count() == len(self.model)
        rows = {r["id"]: (r["vector"], r["tag"]) for r in self.table.to_arrow().to_pylist()}
        assert rows == self.model

    @rule(q=_VECTOR, k=st.integers(1, 12), tag=st.none() | _TAG)
    def search(self, q, k, tag) -> None:
        where = None if tag is None else f"tag = '{tag}'"
        result = self.table.search(q, k=k, where=where)
        candidates = {i: v for i, (v, t) in self.model.items() if tag is None or t == tag}
        dist = {i: float(sum((a - b) ** 2 for a, b in zip(v, q))) for i, v in candidates.items()}
        expected = sorted(dist.values())[:k]
        got_ids = result["id"].to_pylist()
        assert len(got_ids) == len(expected) == len(set(got_ids))
        assert all(i in candidates for i in got_ids)
        np.testing.assert_allclose(result["_distance"].to_numpy(), expected, atol=1e-3)
        np.testing.assert_allclose([dist[i] for i in got_ids], expected, atol=1e-3)


TableMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_table_state_machine = TableMachine.TestCase
