"""The documentation site: it builds strictly, its charts follow the results, and every code sample runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the site needs the docs tools: pip install -e '.[test]'")
pytest.importorskip("material", reason="the site needs mkdocs-material: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNNER = ROOT / "tests" / "docs_samples.py"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import charts  # noqa: E402
import docs_samples  # noqa: E402

PAGES = sorted(DOCS.rglob("*.md"))
PAGES_WITH_SAMPLES = [p for p in PAGES if any(s.language in docs_samples.EXECUTED for s in docs_samples.samples(p))]


def run_page(page: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), str(page)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("page", PAGES_WITH_SAMPLES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_samples_run(page: Path, tmp_path: Path):
    proc = run_page(page, tmp_path)
    assert proc.returncode == 0, f"{page.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_the_pages_a_newcomer_reads_have_samples():
    with_samples = {p.relative_to(DOCS).as_posix() for p in PAGES_WITH_SAMPLES}
    for page in ("index.md", "quickstart.md", "concepts.md", "indexes.md", "text.md", "sql.md", "cli.md",
                 "server.md", "io.md", "integrations.md"):
        assert page in with_samples, f"{page} has no sample the tests run"


def test_every_sample_is_of_a_language_the_runner_executes_or_is_output():
    allowed = set(docs_samples.EXECUTED) | {"text", "json"}
    for page in PAGES:
        for sample in docs_samples.samples(page):
            assert sample.language in allowed, f"{page}:{sample.line}: a ```{sample.language} block is never run"


@pytest.mark.parametrize("block, message", [
    ("```python\nx = 1\nassert x == 2, 'the sample is wrong'\n```\n", "the sample is wrong"),
    ("```bash\nfalse\n```\n", "exited 1"),
    ("```sql\nSELECT 1\n```\n", "needs a `db`"),
    ("```bash\npip install 'omendb[no-such-extra]'\n```\n", "undeclared extras ['no-such-extra']"),
], ids=["python", "bash", "sql", "install"])
def test_a_failing_sample_fails_its_page(tmp_path: Path, block: str, message: str):
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n```python\nimport omendb\n```\n\n" + block)
    proc = run_page(page, tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "page.md:" in proc.stderr, "the error names the page and the sample's line"


def test_top_level_await_and_a_shared_namespace(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("```python\nimport asyncio\nx = 41\n```\n\ntext\n\n```python\nawait asyncio.sleep(0)\n"
                    "assert x + 1 == 42\nprint('answer', x + 1)\n```\n")
    proc = run_page(page, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "answer 42" in proc.stdout


def test_background_processes_of_a_page_are_stopped(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nsleep 600 &\necho $! > pid\n```\n")
    proc = run_page(page, tmp_path)
    assert proc.returncode == 0, proc.stderr
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_charts_are_drawn_from_the_results(tmp_path: Path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    first = charts.draw(results, tmp_path / "charts")
    assert sorted(p.name for p in first) == sorted(charts.CHARTS_DRAWN)
    assert charts.draw(results, tmp_path / "charts") == [], "the same results draw the same bytes"
    hnsw = json.loads((results / "hnsw.json").read_text())
    hnsw["summary"]["at_recall"]["omendb_ms"] *= 3
    (results / "hnsw.json").write_text(json.dumps(hnsw))
    changed = charts.draw(results, tmp_path / "charts")
    assert [p.name for p in changed] == ["peers-100k.svg"], "a changed result redraws its chart, only its chart"


def test_a_missing_result_is_named(tmp_path: Path):
    with pytest.raises(SystemExit, match="hnsw.json"):
        charts.draw(tmp_path, tmp_path / "charts")


def test_site_builds_strictly(built_site: Path):
    index = (built_site / "index.html").read_text()
    for chart in ("peers-100k.svg", "recall-latency-1m.svg", "text-search.svg"):
        assert f"assets/charts/{chart}" in index
        assert (built_site / "assets" / "charts" / chart).stat().st_size > 10_000
    api = (built_site / "api.html").read_text()
    for documented in ("omendb.open", "Table", "HnswSq", "CompactionPolicy", "OmenVectorStore", "OmenError"):
        assert documented in api, f"{documented} missing from the API reference"
    assert "reciprocal rank" in api, "docstrings are rendered, not just names"
    formats = (built_site / "formats" / "wal.html").read_text()
    assert "torn" in formats, "the format pages carry the specs of formats/"


def test_strict_build_fails_on_a_broken_link(tmp_path: Path):
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("charts", "*.png"))
    (docs / "quickstart.md").write_text((docs / "quickstart.md").read_text() + "\n[gone](no-such-page.md)\n")
    config = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("- benchmarks/charts.py", f"- {ROOT / 'benchmarks' / 'charts.py'}")
    (tmp_path / "mkdocs.yml").write_text(config)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr


def test_readme_points_to_the_site_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    assert "mkdocs serve" in readme and "docs/" in readme
    assert len(readme.splitlines()) < 400
