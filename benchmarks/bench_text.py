#!/usr/bin/env python
"""Full-text benchmark: omendb's BM25 and hybrid search next to raw bm25s, in one run.

On the ``summary`` column of pypi-minilm-100k (100,000 one-line package summaries):

1. text index build: omendb ``create_text_index("summary")`` + ``wait_for_index()`` on
   the flushed table, against raw ``bm25s`` (tokenize with the same stemmer and stop
   words, then ``BM25(method="lucene").index``); index bytes on disk against bm25s' saved
   index (``save``, no corpus);
2. BM25 single-query latency p50/p99 over the dataset's 1,000 query summaries (real
   text, disjoint from the rows): ``tbl.search(text=s, k=10, columns=["id"])`` against
   bm25s' fastest path for one query (``get_scores`` of the same tokens, then the top 10
   by ``argpartition``; its ``retrieve`` call is also timed, for information), tokenizing
   included on both sides; both rankings compared (score of each rank);  target <= 1.3x
3. hybrid p50: ``tbl.search(vector, text=s, k=10)`` with each query's own embedding;
4. when the ``tantivy`` package is installed (``pip install 'omendb[bench]'``), tantivy
   (the Rust engine's official bindings) on the same texts, for the choice of library:
   build (``en_stem`` tokenizer, 2 writer threads, one commit, merges waited for), bytes
   on disk (its stored row number included) and single-query p50/p99 (the query's
   punctuation removed for its query parser, top 10 with ids). Its BM25 has its own
   parameters and no stop words, so only speed and size compare.

Results: benchmarks/results/text.json and text.md (``--quick``: 20K rows, 200 queries).

    python benchmarks/bench_text.py            # full run; run it alone
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import bm25s
import numpy as np
import pyarrow.parquet as pq

import omendb
from omendb.index.text import TextIndexConfig
from _harness import (RESULTS, command_line, dir_bytes, lat_summary, load_vectors, now_ns, num, parser,
                      write_report, yes)

K = 10
WARMUP = 20


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="20,000 rows and 200 queries")
    p.add_argument("--out", type=Path, default=None, help="results path without suffix")
    args = p.parse_args()
    rows, n_queries = (20_000, 200) if args.quick else (100_000, 1_000)
    base = pq.read_table(args.data / "base.parquet", columns=["id", "summary", "vector"]).slice(0, rows)
    queries = pq.read_table(args.data / "queries.parquet", columns=["summary", "vector"]).slice(0, n_queries)
    summaries = base.column("summary").to_pylist()
    texts = queries.column("summary").to_pylist()
    X = load_vectors(base.column("vector"), 384)
    Q = load_vectors(queries.column("vector"), 384)
    config = TextIndexConfig(("summary",))
    res: dict = {"command": command_line(), "rows": rows, "queries": n_queries, "k": K}
    work = Path(tempfile.mkdtemp(prefix="omendb-bench-text-"))
    try:
        # ---- raw bm25s
        t0 = time.perf_counter()
        raw = bm25s.BM25(method="lucene")
        raw.index(config.analyze(summaries), show_progress=False)
        raw_build = time.perf_counter() - t0
        raw.save(str(work / "bm25s"))
        raw_bytes = dir_bytes(work / "bm25s")

        def raw_search(text: str):  # bm25s' fastest single-query path: scores, then the top k
            scores = raw.get_scores(config.analyze([text])[0])
            top = np.argpartition(-scores, K)[:K]
            top = top[np.argsort(-scores[top], kind="stable")]
            return top, scores[top]

        def raw_retrieve(text: str):  # its documented query call (more per-call work)
            return raw.retrieve([config.analyze([text])[0]], k=K, show_progress=False, n_threads=1)

        # ---- omendb
        db = omendb.open(work / "db", fsync=False, compaction=False)
        table = db.create_table("t", data={"id": base.column("id"), "summary": base.column("summary"), "vector": X},
                                metric="cosine")
        table.flush()
        assert table.wait_for_index(timeout=3600)  # the HNSW graph first: not part of the text build
        t0 = time.perf_counter()
        table.create_text_index("summary")
        assert table.wait_for_index(timeout=3600)
        omen_build = time.perf_counter() - t0
        omen_bytes = dir_bytes(work / "db" / "t" / "segments", "*.text")
        res["build"] = {"omendb_s": omen_build, "bm25s_s": raw_build, "ratio": omen_build / raw_build,
                        "omendb_bytes": omen_bytes, "bm25s_bytes": raw_bytes}

        # ---- rankings and latency, alternating blocks of queries between the sides
        same, compared = 0, 0
        for text in texts:
            ours = table.search(text=text, k=K, columns=["id"])["_score"].to_numpy()
            _, scores = raw_search(text)
            theirs = scores[scores > 0]
            compared += 1
            same += int(len(ours) == len(theirs) and np.allclose(ours, theirs, rtol=1e-4))
        sides = {"omendb": lambda s: table.search(text=s, k=K, columns=["id"]), "bm25s": raw_search,
                 "bm25s_retrieve": raw_retrieve}
        tantivy_search = _tantivy(summaries, work / "tantivy", res)
        if tantivy_search is not None:
            sides["tantivy"] = tantivy_search
        lat: dict[str, list[int]] = {name: [] for name in sides}
        for name, run in sides.items():
            for text in texts[:WARMUP]:
                run(text)
        for block in range(0, len(texts), 100):
            for name in (list(sides) if block % 200 == 0 else list(sides)[::-1]):
                for text in texts[block:block + 100]:
                    t = now_ns()
                    sides[name](text)
                    lat[name].append(now_ns() - t)
        res["bm25"] = {name: lat_summary(v) for name, v in lat.items()}
        res["bm25"]["ratio_p50"] = res["bm25"]["omendb"]["p50_ms"] / res["bm25"]["bm25s"]["p50_ms"]
        res["bm25"]["same_scores"] = {"queries": compared, "equal": same}
        hybrid = []
        for text, q in zip(texts[:WARMUP], Q[:WARMUP]):
            table.search(q, text=text, k=K, columns=["id"])
        for text, q in zip(texts, Q):
            t = now_ns()
            table.search(q, text=text, k=K, columns=["id"])
            hybrid.append(now_ns() - t)
        vector = []
        for q in Q:
            t = now_ns()
            table.search(q, k=K, columns=["id"])
            vector.append(now_ns() - t)
        res["hybrid"] = lat_summary(hybrid)
        res["vector"] = lat_summary(vector)
        db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stem = args.out or RESULTS / ("text-quick" if args.quick else "text")
    print(write_report(stem, res, markdown))
    return 0


def _tantivy(summaries: list[str], path: Path, res: dict):
    """Build a tantivy index of ``summaries`` (figures into ``res["tantivy"]``) and return
    its single-query search, or None when tantivy is not installed."""
    try:
        import tantivy
    except ImportError:
        return None
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("row", stored=True, indexed=False)
    builder.add_text_field("summary", stored=False, tokenizer_name="en_stem")
    schema = builder.build()
    path.mkdir()
    t0 = time.perf_counter()
    index = tantivy.Index(schema, path=str(path))
    writer = index.writer(heap_size=256 << 20, num_threads=2)
    for row, text in enumerate(summaries):
        writer.add_document(tantivy.Document(row=row, summary=text))
    writer.commit()
    writer.wait_merging_threads()
    build_s = time.perf_counter() - t0
    index.reload()
    searcher = index.searcher()
    res["tantivy"] = {"build_s": build_s, "bytes": dir_bytes(path), "version": getattr(tantivy, "__version__", "")}

    def search(text: str):
        words = re.sub(r"[^\w\s]", " ", text)
        if not words.strip():
            return []
        hits = searcher.search(index.parse_query(words, ["summary"]), K).hits
        return [searcher.doc(address)["row"][0] for _, address in hits]

    return search


def markdown(res: dict) -> str:
    b, s = res["build"], res["bm25"]
    lines = [f"# Full-text benchmark: {res['rows']:,} summaries, {res['queries']:,} queries", "",
             f"Command: `{res['command']}`", "",
             "BM25 (Lucene variant, k1 1.5, b 0.75, English stop words and stemming) over the `summary` column; "
             "queries are the dataset's query summaries (real text, disjoint from the rows), one per call, "
             "tokenizing included on both sides.", "",
             "raw bm25s = `get_scores` + `argpartition` top 10 (its fastest single-query path).", "",
             "| check | omendb | raw bm25s | ratio | target | met |", "| --- | ---: | ---: | ---: | ---: | :---: |",
             f"| text index build, s | {num(b['omendb_s'], 2)} | {num(b['bm25s_s'], 2)} | {num(b['ratio'], 2)}x | | |",
             f"| index bytes | {b['omendb_bytes']:,} | {b['bm25s_bytes']:,} | "
             f"{num(b['omendb_bytes'] / b['bm25s_bytes'], 2)}x | | |",
             f"| BM25 p50, ms | {num(s['omendb']['p50_ms'])} | {num(s['bm25s']['p50_ms'])} | "
             f"{num(s['ratio_p50'], 2)}x | <= 1.3x | {yes(s['ratio_p50'] <= 1.3)} |",
             f"| BM25 p99, ms | {num(s['omendb']['p99_ms'])} | {num(s['bm25s']['p99_ms'])} | "
             f"{num(s['omendb']['p99_ms'] / s['bm25s']['p99_ms'], 2)}x | | |",
             f"| bm25s `retrieve` p50, ms (its query call, for information) | | "
             f"{num(s['bm25s_retrieve']['p50_ms'])} | | | |", "",
             f"Same top-10 scores as bm25s (rtol 1e-4): {s['same_scores']['equal']} of "
             f"{s['same_scores']['queries']} queries.", ""]
    if "tantivy" in res:
        t = res["tantivy"]
        lines += [f"tantivy {t['version']} on the same texts (for the choice of library; its own BM25 "
                  "parameters, no stop words):", "",
                  "| check | omendb | tantivy | ratio |", "| --- | ---: | ---: | ---: |",
                  f"| build, s | {num(b['omendb_s'], 2)} | {num(t['build_s'], 2)} | "
                  f"{num(b['omendb_s'] / t['build_s'], 2)}x |",
                  f"| bytes on disk | {b['omendb_bytes']:,} | {t['bytes']:,} | {num(b['omendb_bytes'] / t['bytes'], 2)}x |",
                  f"| single query p50, ms | {num(s['omendb']['p50_ms'])} | {num(s['tantivy']['p50_ms'])} | "
                  f"{num(s['omendb']['p50_ms'] / s['tantivy']['p50_ms'], 2)}x |",
                  f"| single query p99, ms | {num(s['omendb']['p99_ms'])} | {num(s['tantivy']['p99_ms'])} | "
                  f"{num(s['omendb']['p99_ms'] / s['tantivy']['p99_ms'], 2)}x |", ""]
    lines += [
             "| search | p50 ms | p99 ms |", "| --- | ---: | ---: |",
             f"| hybrid (vector + text, RRF) | {num(res['hybrid']['p50_ms'])} | {num(res['hybrid']['p99_ms'])} |",
             f"| vector alone (default recall) | {num(res['vector']['p50_ms'])} | {num(res['vector']['p99_ms'])} |",
             ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
