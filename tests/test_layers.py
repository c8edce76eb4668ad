"""The layer rule of DESIGN.md, checked mechanically: faces -> database -> table ->
query -> index -> storage, and the shared root modules below all of them.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); import-linter
reads the real import graph, so an upward import anywhere fails this test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import omendb

ROOT = Path(omendb.__file__).resolve().parent.parent


def _lint(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is missing: install the test extra (pip install -e '.[test]')")
    return subprocess.run([lint, "--config", "pyproject.toml", "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def test_no_module_imports_a_layer_above_its_own() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


def test_the_contract_catches_an_upward_import(tmp_path: Path) -> None:
    # The same contracts over a copy of the package in which storage imports the table layer.
    shutil.copytree(ROOT / "omendb", tmp_path / "omendb", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "omendb" / "storage" / "wal.py", "a") as handle:
        handle.write("\nfrom ..table import state  # noqa: E402,F401 (an upward import)\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = _lint(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0, result.stdout[-3000:]
    assert "omendb.storage is not allowed to import omendb.table" in result.stdout, result.stdout[-3000:]
