"""Draw the site's charts from the committed benchmark results (``benchmarks/results/*.json``).

    python benchmarks/charts.py [--results benchmarks/results] [--out docs/assets/charts]

It is also the documentation site's mkdocs hook (``hooks:`` in ``mkdocs.yml``): every
``mkdocs build`` or ``mkdocs serve`` redraws the charts before it collects the pages, so
the site always shows the results that are committed, never a figure drawn by hand. A
chart is rewritten only when its bytes change (the SVGs carry no date), so ``mkdocs serve``
does not rebuild in a loop.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHARTS = ROOT / "docs" / "assets" / "charts"

#: Colours kept per system across every chart.
COLOURS = {"omendb": "#3f51b5", "faiss": "#7f7f7f", "hnswlib": "#b0b0b0", "LanceDB": "#e67e22",
           "Chroma": "#2ca02c", "bm25s": "#8c564b", "tantivy": "#d62728", "NumPy": "#7f7f7f"}


def _load(results: Path, name: str) -> dict:
    path = results / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"charts: cannot read {path}: {exc}") from exc


def _fastest_at(points: list[dict], target: float) -> dict | None:
    """The fastest setting whose recall reaches ``target`` (what a user tuning for it would pick)."""
    ok = [p for p in points if p["recall"] >= target]
    return min(ok, key=lambda p: p["p50_ms"]) if ok else None


def _frontier(points: list[dict]) -> list[dict]:
    """The settings no other setting beats on both recall and p50, by recall."""
    best: list[dict] = []
    for p in sorted(points, key=lambda p: (p["p50_ms"], -p["recall"])):
        if not best or p["recall"] > best[-1]["recall"]:
            best.append(p)
    return sorted(best, key=lambda p: p["recall"])


def _bars(ax, labels: list[str], values: list[float], unit: str) -> None:
    colours = [COLOURS.get(label.split(" ")[0], "#999999") for label in labels]
    bars = ax.barh(labels[::-1], values[::-1], color=colours[::-1])
    for bar, value in zip(bars, values[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.3g} {unit}",
                va="center", fontsize=9)
    ax.set_xlim(0, max(values) * 1.3)
    ax.spines[["top", "right"]].set_visible(False)


def peers_100k(results: Path, plt) -> object:
    """p50 of one query at recall@10 >= 0.95 on 100K sentence embeddings: omendb, faiss, LanceDB, Chroma."""
    res = _load(results, "hnsw")
    systems = [("omendb", res["summary"]["at_recall"]["omendb_ms"]),
               ("faiss IndexHNSWFlat", res["summary"]["at_recall"]["faiss_ms"])]
    for key, label in (("lancedb", "LanceDB"), ("chroma", "Chroma")):
        best = _fastest_at(res["peers"][key]["configs"], 0.95)
        if best:
            systems.append((f"{label} ({best['index']})", best["p50_ms"]))
    fig, ax = plt.subplots(figsize=(7, 2.8))
    _bars(ax, [s for s, _ in systems], [v for _, v in systems], "ms")
    ax.set_xlabel("p50 latency of one query at recall@10 >= 0.95 (ms, lower is better)")
    ax.set_title("100K x 384 sentence embeddings, k=10 (bench_hnsw.py)", fontsize=10)
    return fig


def recall_latency_1m(results: Path, plt) -> object:
    """Recall@10 against p50 at 1M rows: omendb's ef sweep and recall= targets, raw faiss, LanceDB."""
    res = _load(results, "scale-1m")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    search = res["omendb_search"]
    pts = search["ef_sweep"]
    ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], "o-", color=COLOURS["omendb"],
            label="omendb (ef sweep)")
    pts = search["recall_targets"]
    ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], "s--", color=COLOURS["omendb"],
            alpha=0.6, label="omendb (recall= targets)")
    ax.plot([search["default"]["recall"]], [search["default"]["p50_ms"]], "k*", ms=13, label="omendb default")
    pts = res["faiss"]["ef_sweep"]
    ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], "^-", color=COLOURS["faiss"],
            label="raw faiss IndexHNSWFlat")
    for index, marker, alpha in (("IVF_HNSW_SQ", "v", 1.0), ("IVF_PQ", "D", 0.6)):
        pts = _frontier([p for p in res["lancedb"]["configs"] if p["index"] == index])
        if pts:
            ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], marker, ls=":",
                    color=COLOURS["LanceDB"], alpha=alpha, label=f"LanceDB {index} (best settings)")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("p50 of one query (ms, log scale)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{res['rows']:,} x 384 mixture vectors (bench_scale.py)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def text_search(results: Path, plt) -> object:
    """BM25 text search p50 on 100K summaries: omendb, raw bm25s, tantivy."""
    res = _load(results, "text")
    bm25 = res["bm25"]
    systems = [("omendb", bm25["omendb"]["p50_ms"]), ("bm25s get_scores + top 10", bm25["bm25s"]["p50_ms"]),
               ("tantivy", bm25["tantivy"]["p50_ms"]), ("omendb hybrid (vector + text)", res["hybrid"]["p50_ms"])]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    _bars(ax, [s for s, _ in systems], [v for _, v in systems], "ms")
    ax.set_xlabel("p50 latency of one query (ms, lower is better)")
    ax.set_title("BM25 over 100K package summaries, 1,000 queries (bench_text.py)", fontsize=10)
    return fig


def ingest_core(results: Path, plt) -> object:
    """Durable ingest and exact search at 100K rows against the raw bounds they are measured by."""
    res = _load(results, "core")
    ingest = res["ingest"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.6))
    _bars(left, ["omendb (fsync per batch)", "NumPy raw write + fsync"],
          [ingest["omendb"]["rows_per_s"] / 1e3, ingest["raw"]["rows_per_s"] / 1e3], "K")
    left.set_xlabel("durable rows/s, 1,000-row batches (K)")
    single = res["single"]
    _bars(right, ["omendb exact scan", "NumPy X @ q"], [single["omendb"]["p50_ms"], single["numpy"]["p50_ms"]], "ms")
    right.set_xlabel("exact search p50, 100K x 384 (ms)")
    fig.suptitle("bench_core.py", fontsize=10)
    return fig


#: Each chart's file name and the function that draws it.
CHARTS_DRAWN: dict[str, Callable] = {
    "peers-100k.svg": peers_100k,
    "recall-latency-1m.svg": recall_latency_1m,
    "text-search.svg": text_search,
    "ingest-and-exact.svg": ingest_core,
}


def draw(results: Path = RESULTS, out: Path = CHARTS) -> list[Path]:
    """Draw every chart into ``out``; return the files whose contents changed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "omendb", "svg.fonttype": "path", "font.size": 9})
    out.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, chart in CHARTS_DRAWN.items():
        fig = chart(results, plt)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        plt.close(fig)
        path = out / name
        data = buffer.getvalue()
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            changed.append(path)
    return changed


def copy_report_images(results: Path, out: Path) -> list[Path]:
    """Copy the reports' own plots (``results/*.png``) beside the site's report pages, when they changed."""
    out.mkdir(parents=True, exist_ok=True)
    changed = []
    for image in sorted(results.glob("*.png")):
        target = out / image.name
        data = image.read_bytes()
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
            changed.append(target)
    return changed


def on_pre_build(config, **kwargs) -> None:
    """mkdocs hook: redraw the charts into the site's ``assets/charts`` before the pages are read."""
    docs = Path(config["docs_dir"])
    draw(RESULTS, docs / "assets" / "charts")
    copy_report_images(RESULTS, docs / "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=CHARTS)
    args = parser.parse_args()
    changed = draw(args.results, args.out)
    print(f"charts: {len(CHARTS_DRAWN)} drawn in {args.out}, {len(changed)} changed")


if __name__ == "__main__":
    main()
