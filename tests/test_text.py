"""Full-text (BM25) and hybrid search: rankings against bm25s over the live rows, text
indexes built in the background, deletes, upserts, compaction, checkouts, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import bm25s
import numpy as np
import pytest

import omendb
from omendb.index.text import MAX_QUERY_CHARS, TextIndexConfig

DIM = 8
WORDS = ["arrow", "parser", "fast", "json", "vector", "store", "running", "runs", "database", "http", "the",
         "client", "async", "query"] + [f"w{i}" for i in range(150)]
QUERIES = ["fast arrow parser", "running database", "w5 w7 json", "http client async", "w140 vector w3",
           "fast fast arrow"]  # (a word given twice counts twice, as in bm25s)


def corpus(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, rng.integers(1, 25))) for _ in range(n)]


def rows(ids: np.ndarray, texts: list[str], rng: np.random.Generator) -> dict:
    return {"id": ids, "summary": texts, "vector": rng.standard_normal((len(ids), DIM)).astype(np.float32)}


def reference_scores(texts: dict[int, str], query: str) -> dict[int, float]:
    """bm25s (method "lucene") over exactly these rows: every row's score for ``query``."""
    ids = sorted(texts)
    analyzer = TextIndexConfig(("summary",))
    index = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    index.index(analyzer.analyze([texts[i] for i in ids]), show_progress=False)
    return dict(zip(ids, index.get_scores(analyzer.analyze([query])[0]).tolist()))


def assert_same_ranking(result, texts: dict[int, str], query: str, k: int) -> None:
    """``result`` (ids, ``_score``) is bm25s' top ``k`` over ``texts``: the same scores rank
    by rank, each row's own score (rows tied on score may come in either order)."""
    scores = reference_scores(texts, query)
    want = sorted((-score, row_id) for row_id, score in scores.items() if score > 0)[:k]
    got_ids, got_scores = result["id"].to_pylist(), result["_score"].to_numpy()
    assert len(got_ids) == len(want), (query, got_ids, want)
    np.testing.assert_allclose(got_scores, [-s for s, _ in want], rtol=1e-4)
    np.testing.assert_allclose(got_scores, [scores[i] for i in got_ids], rtol=1e-4)
    assert len(set(got_ids)) == len(got_ids)


@pytest.fixture
def texts_table(db_path: Path, rng):
    """A table of 2,400 rows over several segments and the memtable, with a text index."""
    db = omendb.open(db_path, memtable_bytes=48 << 10, compaction=False)
    texts = corpus(rng, 2_400)
    table = db.create_table("t", data=rows(np.arange(800), texts[:800], rng))
    for start in range(800, 2_400, 400):
        table.add(rows(np.arange(start, start + 400), texts[start:start + 400], rng))
    table.create_text_index("summary")
    yield db, table, dict(enumerate(texts))
    db.close()


def test_rankings_equal_one_bm25_index_over_all_rows(texts_table) -> None:
    _, table, texts = texts_table
    assert table.stats()["segments"] >= 3 and table.stats()["memtable_rows"] > 0
    for query in QUERIES:  # before any text index file exists: every part from its rows
        assert_same_ranking(table.search(text=query, k=10), texts, query, 10)
    assert table.wait_for_index(timeout=120)
    entries = [h.entry for h in table.core.state.segments]
    assert all(e.text_file and e.text_params["columns"] == ["summary"] for e in entries)
    stats = table.stats()
    assert stats["text_index"]["columns"] == ["summary"] and stats["text_indexed_segments"] == stats["segments"]
    for query in QUERIES:  # through the index files
        assert_same_ranking(table.search(text=query, k=10), texts, query, 10)


def test_rows_written_between_searches_are_ranked_with_the_rest(db_path: Path, rng) -> None:
    with omendb.open(db_path, memtable_bytes=64 << 20) as db:  # (all of it stays in the memtable)
        texts = corpus(rng, 1_200)
        table = db.create_table("t", data=rows(np.arange(200), texts[:200], rng))
        table.create_text_index("summary")
        for start in range(200, 1_200, 50):
            table.add(rows(np.arange(start, start + 50), texts[start:start + 50], rng))
            query = QUERIES[start // 50 % len(QUERIES)]
            assert_same_ranking(table.search(text=query, k=10), dict(enumerate(texts[:start + 50])), query, 10)
        ranges = table.core.state.memtable.text_postings(table.core.state.info.text,
                                                         table.core.state.memtable.view().table)
        assert [r[0] for r in ranges] == sorted(r[0] for r in ranges) and ranges[-1][1] == 1_200
        assert len(ranges) <= 8  # log-many ranges, not one per write


def test_changing_k1_or_b_keeps_the_files_changing_columns_rebuilds_them(texts_table) -> None:
    _, table, texts = texts_table
    assert table.wait_for_index(timeout=120)
    files = [h.entry.text_file for h in table.core.state.segments]
    table.create_text_index("summary", k1=1.2, b=0.5)  # weights only: the counts stay
    assert table.wait_for_index(timeout=120)
    assert [h.entry.text_file for h in table.core.state.segments] == files
    assert table.stats()["text_indexed_segments"] == len(files)
    ids = sorted(texts)
    index = bm25s.BM25(method="lucene", k1=1.2, b=0.5)
    index.index(TextIndexConfig(("summary",)).analyze([texts[i] for i in ids]), show_progress=False)
    want = index.get_scores(TextIndexConfig(("summary",)).analyze(["fast arrow parser"])[0])
    got = table.search(text="fast arrow parser", k=5)
    np.testing.assert_allclose(got["_score"].to_numpy(), np.sort(want)[::-1][:5], rtol=1e-4)
    table.create_text_index("summary", language=None)  # other terms: other files
    assert table.wait_for_index(timeout=120)
    assert not set(h.entry.text_file for h in table.core.state.segments) & set(files)


def test_stemming_and_stop_words(db_path: Path, rng) -> None:
    with omendb.open(db_path) as db:
        table = db.create_table("t", data=rows(np.arange(3), ["she runs daily", "the the the", "a parser"], rng))
        table.create_text_index(["summary"])
        assert table.search(text="running", k=5)["id"].to_pylist() == [0]  # same stem
        assert table.search(text="the", k=5).num_rows == 0  # only a stop word: nothing to rank by
        table.create_text_index("summary", language=None)  # words as written
        assert table.search(text="running", k=5).num_rows == 0
        assert table.search(text="the", k=5)["id"].to_pylist() == [1]


def test_deletes_and_upserts_are_honoured(texts_table, rng) -> None:
    _, table, texts = texts_table
    assert table.wait_for_index(timeout=120)
    table.delete(list(range(0, 2_400, 3)))
    for i in range(0, 2_400, 3):
        del texts[i]
    replaced = {1: "fast fast arrow parser parser", 1_201: "database database running"}
    table.upsert(rows(np.array(list(replaced)), list(replaced.values()), rng))
    texts.update(replaced)
    for query in QUERIES:
        result = table.search(text=query, k=10)
        assert not set(result["id"].to_pylist()) & set(range(0, 2_400, 3))
        assert_same_ranking(result, texts, query, 10)
    assert table.search(text="fast arrow parser", k=1)["id"].to_pylist() == [1]


def test_rows_tied_on_score_come_earliest_first_and_repeats_cost_nothing(db_path: Path, rng) -> None:
    with omendb.open(db_path, memtable_bytes=8 << 10, compaction=False) as db:
        table = db.create_table("t", data=rows(np.arange(250), ["fast arrow parser"] * 250, rng))
        for start in range(250, 1_000, 250):
            table.add(rows(np.arange(start, start + 250), ["fast arrow parser"] * 250, rng))
        table.create_text_index("summary")
        assert table.stats()["segments"] > 1
        assert table.search(text="arrow", k=3)["id"].to_pylist() == [0, 1, 2]
        repeated = table.search(text="arrow " * 1_500, k=3)  # one postings read, not 1,500
        assert repeated["id"].to_pylist() == [0, 1, 2]
        single = table.search(text="arrow", k=3)["_score"].to_numpy()
        np.testing.assert_allclose(repeated["_score"].to_numpy(), 1_500 * single, rtol=1e-5)


def test_manifests_with_text_indexes_are_format_version_2(db_path: Path, rng) -> None:
    import json

    with omendb.open(db_path) as db:
        table = db.create_table("t", data=rows(np.arange(20), corpus(rng, 20), rng))
        table.flush()
        newest = lambda: json.loads(sorted((db_path / "t" / "manifests").iterdir())[-1].read_bytes())
        assert newest()["format_version"] == 1  # readable by releases from before text indexes
        table.create_text_index("summary")
        assert newest()["format_version"] == 2  # which refuse it by name
    with omendb.open(db_path) as db:
        assert db.open_table("t").search(text="fast", k=3) is not None


def test_where_applies_before_ranking_and_k_rows_come_back(texts_table) -> None:
    _, table, texts = texts_table
    result = table.search(text="fast arrow parser", k=10, where="id % 7 = 3")
    assert result.num_rows == 10 and all(i % 7 == 3 for i in result["id"].to_pylist())
    scores = result["_score"].to_numpy()
    assert np.all(np.diff(scores) <= 1e-6)
    # the filter restricts what comes back, not the corpus the scores are computed over
    full = {row["id"]: row["_score"] for row in table.search(text="fast arrow parser", k=2_400).to_pylist()}
    for row in result.to_pylist():
        assert row["_score"] == pytest.approx(full[row["id"]], rel=1e-5)


def test_compaction_keeps_rankings_and_builds_the_merged_text_index(texts_table) -> None:
    _, table, texts = texts_table
    assert table.wait_for_index(timeout=120)
    table.compact()
    assert table.stats()["segments"] == 1
    for query in QUERIES:
        assert_same_ranking(table.search(text=query, k=10), texts, query, 10)
    assert table.wait_for_index(timeout=120)
    assert table.core.state.segments[0].entry.text_file


def test_a_checkout_sees_the_text_index_of_its_time(db_path: Path, rng) -> None:
    with omendb.open(db_path) as db:
        texts = corpus(rng, 300)
        table = db.create_table("t", data=rows(np.arange(300), texts, rng))
        table.flush()
        before = table.version
        table.create_text_index("summary")
        assert table.wait_for_index(timeout=60)
        indexed = table.version
        table.add(rows(np.array([300]), ["fast fast fast arrow"], rng))
        table.flush()
        with pytest.raises(omendb.OmenError, match="no text index"):
            table.checkout(before).search(text="fast", k=3)
        old = table.checkout(indexed)
        assert old.core.state.segments[0].entry.text_file  # its own segment's text index
        assert_same_ranking(old.search(text="fast arrow", k=10), dict(enumerate(texts)), "fast arrow", 10)
        assert table.search(text="fast arrow", k=1)["id"].to_pylist() == [300]


def test_hybrid_search_is_reciprocal_rank_fusion_of_both_rankings(texts_table, rng) -> None:
    _, table, texts = texts_table
    q = rng.standard_normal(DIM).astype(np.float32)
    k, depth = 5, 20
    vector = table.search(q, k=depth, exact=True)["id"].to_pylist()
    text = table.search(text="fast arrow parser", k=depth)["id"].to_pylist()
    fused: dict[int, float] = {}
    for ranking in (vector, text):
        for rank, row_id in enumerate(ranking, start=1):
            fused[row_id] = fused.get(row_id, 0.0) + 1 / (60 + rank)
    want = sorted(fused.items(), key=lambda item: -item[1])[:k]
    result = table.search(q, text="fast arrow parser", k=k, exact=True)
    assert result.column_names[-3:] == ["_relevance_score", "_distance", "_score"]
    np.testing.assert_allclose(result["_relevance_score"].to_numpy(), [r for _, r in want], rtol=1e-6)
    for row in result.to_pylist():  # (rows tied on relevance may come in either order)
        assert row["_relevance_score"] == pytest.approx(fused[row["id"]], rel=1e-6)
    for row in result.to_pylist():  # each side's own figure, null where that side did not rank it
        assert (row["_distance"] is None) == (row["id"] not in vector)
        assert (row["_score"] is None) == (row["id"] not in text)
    only_text = table.search(q, text="fast arrow parser", k=k, exact=True, vector_weight=0)
    assert only_text["id"].to_pylist() == text[:k]


def test_bad_text_input_is_refused_and_changes_nothing(db_path: Path, rng) -> None:
    with omendb.open(db_path) as db:
        table = db.create_table("t", data={**rows(np.arange(50), corpus(rng, 50), rng),
                                           "n": np.arange(50)})
        with pytest.raises(omendb.OmenError, match="no text index"):
            table.search(text="fast", k=3)
        with pytest.raises(omendb.OmenError, match="unknown column 'nope'"):
            table.create_text_index("nope")
        with pytest.raises(omendb.OmenError, match="not a string column"):
            table.create_text_index("n")
        with pytest.raises(omendb.OmenError, match="language"):
            table.create_text_index("summary", language="klingon")
        with pytest.raises(omendb.OmenError, match=r"b must be"):
            table.create_text_index("summary", b=2)
        with pytest.raises(omendb.OmenError, match="column names"):
            table.create_text_index({"summary": 1})
        assert table.core.state.info.text is None
        table.create_text_index("summary")
        version = table.version
        for text, match in (("", "empty"), ("   ", "empty"), ("x" * (MAX_QUERY_CHARS + 1), "at most"),
                            (b"fast", "must be a string"), (42, "must be a string")):
            with pytest.raises(omendb.OmenError, match=match):
                table.search(text=text, k=3)
        with pytest.raises(omendb.OmenError, match="one query vector"):
            table.search(np.zeros((2, DIM)), text="fast", k=3)
        with pytest.raises(omendb.OmenError, match="text_weight"):
            table.search(np.zeros(DIM), text="fast", k=3, text_weight=-1)
        with pytest.raises(omendb.OmenError, match="k must be"):
            table.search(text="fast", k=0)
        with pytest.raises(omendb.OmenError, match="vector side"):
            table.search(text="fast", k=3, ef=64)
        assert table.search(np.zeros(DIM), text="fast", k=3, text_weight=np.float32(0.5)).num_rows == 3
        with pytest.raises(omendb.OmenError, match="q, text=, or both"):
            table.search(k=3)
        assert table.version == version and table.count() == 50


def test_a_damaged_text_index_file_is_reported_not_used_and_rebuilt(db_path: Path, rng) -> None:
    texts = corpus(rng, 500)
    with omendb.open(db_path) as db:
        table = db.create_table("t", data=rows(np.arange(500), texts, rng))
        table.create_text_index("summary")
        assert table.wait_for_index(timeout=60)
        path = db_path / "t" / "segments" / table.core.state.segments[0].entry.text_file
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        middle = handle.read(16)
        handle.seek(-len(middle), 1)
        handle.write(bytes(b ^ 0xFF for b in middle))
    with omendb.open(db_path) as db:
        table = db.open_table("t")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = table.search(text="fast arrow parser", k=10)
        assert any("checksum" in str(w.message) and path.name in str(w.message) for w in caught)
        assert_same_ranking(result, dict(enumerate(texts)), "fast arrow parser", 10)
        assert table.wait_for_index(timeout=60)
        assert table.core.state.segments[0].entry.text_file != path.name


def test_a_kill_during_a_text_index_build_leaves_the_table_searchable(db_path: Path, rng) -> None:
    texts = corpus(rng, 4_000)
    (db_path.parent / "texts.txt").write_text("\n".join(texts))
    code = textwrap.dedent(f"""
        import time, numpy as np, omendb
        from omendb.table import indexer
        def slow(terms, *a, **k):  # a build the test kills half way
            for i, _ in enumerate(terms):
                if i == 2_000:
                    print("building", flush=True)
                    time.sleep(60)
            raise AssertionError("not killed")
        indexer.Postings.build = slow
        texts = open({str(db_path.parent / "texts.txt")!r}).read().split("\\n")
        t = omendb.open({str(db_path)!r}).create_table("t", data={{
            "id": np.arange(4_000), "summary": texts, "vector": np.zeros((4_000, {DIM}), np.float32)}})
        t.flush()
        t.create_text_index("summary")
        print("acknowledged", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        lines = [child.stdout.readline().strip() for _ in range(2)]
        assert sorted(lines) == ["acknowledged", "building"], lines
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    with omendb.open(db_path) as db:
        table = db.open_table("t")
        assert table.core.state.info.text is not None  # the acknowledged config survived
        assert_same_ranking(table.search(text="fast arrow parser", k=10), dict(enumerate(texts)),
                            "fast arrow parser", 10)
        assert table.wait_for_index(timeout=60)
        assert table.core.state.segments[0].entry.text_file
        assert not [p.name for p in (db_path / "t" / "segments").iterdir() if ".tmp" in p.name]


def test_a_full_disk_during_a_text_index_build_fails_the_wait_and_keeps_the_table(db_path: Path, rng,
                                                                                    monkeypatch) -> None:
    import errno

    import pyarrow as pa

    texts = corpus(rng, 400)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with omendb.open(db_path) as db:
        table = db.create_table("t", data=rows(np.arange(400), texts, rng))
        table.flush()
        monkeypatch.setattr(pa, "OSFile", no_space)  # (the text index file's writer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (the builder's report of the failure)
            table.create_text_index("summary")
            with pytest.raises(omendb.IndexBuildError, match="no space left"):
                table.wait_for_index(timeout=60)  # ends with the failure, not at the timeout
        monkeypatch.undo()
        assert table.count() == 400 and table.core.state.segments[0].entry.text_file is None
        assert not [p.name for p in (db_path / "t" / "segments").iterdir() if ".tmp" in p.name]
        assert_same_ranking(table.search(text="fast arrow parser", k=10), dict(enumerate(texts)),
                            "fast arrow parser", 10)  # searched from the rows meanwhile


def test_a_hybrid_search_reads_one_state_of_the_table(texts_table, rng, monkeypatch) -> None:
    """Both sides rank the same rows: a write landing between them cannot split the answer."""
    from omendb.table.reader import TableReader

    _, table, _ = texts_table
    taken: list[int] = []
    original = TableReader.capture

    def counting(self):
        taken.append(1)
        return original(self)

    monkeypatch.setattr(TableReader, "capture", counting)
    table.search(rng.standard_normal(DIM).astype(np.float32), text="fast arrow parser", k=5)
    assert len(taken) == 1
