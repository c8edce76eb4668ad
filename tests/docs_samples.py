"""Run every code sample of one documentation page, in order, as a reader would.

    python tests/docs_samples.py docs/quickstart.md     # run from an empty folder

A page's fenced blocks run top to bottom, in the current folder:

- ``python`` blocks share one namespace (a later block uses what an earlier one made);
  top-level ``await`` is allowed, as in a notebook or ``python -m asyncio``;
- ``bash`` blocks run in ``bash -euo pipefail`` with this interpreter's ``bin`` folder
  first on ``PATH`` (so ``omendb`` is the installed command). A process a block leaves
  running in the background (``omendb serve ... &``) is stopped when the page ends.
  A block made only of install commands (``pip install``, ``python -m venv``) is not run
  (it would install over the environment under test); instead every extra it names
  must be one that ``pyproject.toml`` declares;
- ``sql`` blocks run through ``db.sql`` of the page's ``db`` and must return rows.

Blocks of any other language (``text``, ``json``) are output or layouts, not samples.
A failing block exits non-zero with the page, the block's line and the error.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ("python", "bash", "sql")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^\n]*)$")
INSTALL = re.compile(r"^\s*(?:\S*/)?(?:pip3?|python3?(?:\.\d+)? -m pip) install |^\s*(?:\S*/)?python3?(?:\.\d+)? -m venv ")
#: Lines of an install block that only move between folders or activate a venv.
INSTALL_GLUE = re.compile(r"^\s*(?:cd |\. |source |git clone )")
BLOCK_TIMEOUT_S = 300


@dataclass
class Sample:
    language: str
    line: int          # 1-based line of the opening fence
    code: str


def samples(page: Path) -> list[Sample]:
    """The page's fenced code blocks, in order (snippet includes are not followed: they hold specs)."""
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        language = (opening["info"].split() or [""])[0].strip("{}.").lower()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        found.append(Sample(language, i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return found


def declared_extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("optional-dependencies", {}))


def is_install_block(code: str) -> bool:
    commands = [c for c in _commands(code) if c.strip()]
    return bool(commands) and any(INSTALL.search(c) for c in commands) and all(
        INSTALL.search(c) or INSTALL_GLUE.search(c) or _is_plain_run(c) for c in commands)


def _is_plain_run(command: str) -> bool:
    # the run that follows an install in a one-liner (".venv/bin/omendb demo", ".venv/bin/python -m pytest")
    return bool(re.match(r"^\s*\.venv/bin/\S+", command))


def _commands(code: str) -> list[str]:
    lines = [ln.split(" #")[0] for ln in code.splitlines() if not ln.lstrip().startswith("#")]
    return [part for ln in lines for part in re.split(r"&&|;", ln)]


def check_install_block(code: str, where: str) -> None:
    """Every ``omendb[...]`` extra an install command names must exist; the package must be installable here."""
    extras = declared_extras()
    for command in _commands(code):
        if not INSTALL.search(command):
            continue
        for word in shlex.split(command):
            match = re.fullmatch(r"(?:omendb|\.|/\S*)\[(?P<extras>[^\]]+)\]", word)
            if match:
                unknown = {e.strip() for e in match["extras"].split(",")} - extras
                if unknown:
                    raise AssertionError(f"{where}: install names undeclared extras {sorted(unknown)}: {command.strip()}")


class Page:
    """One page's run: the shared namespace, and the background processes its bash blocks leave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.namespace: dict = {"__name__": "__main__"}
        self.sessions: list[subprocess.Popen] = []

    def run(self, sample: Sample) -> None:
        where = f"{self.path}:{sample.line}"
        if sample.language == "python":
            self._python(sample.code, where)
        elif sample.language == "bash":
            self._bash(sample.code, where)
        elif sample.language == "sql":
            db = self.namespace.get("db")
            if db is None:
                raise AssertionError(f"{where}: an sql sample needs a `db` made by an earlier python sample")
            rows = db.sql(sample.code).fetchall()
            if not rows:
                raise AssertionError(f"{where}: the sql sample returned no rows")
            print(f"{where}: sql returned {len(rows)} rows")

    def _python(self, code: str, where: str) -> None:
        compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(compiled, self.namespace)  # noqa: S307 - the page's own sample, by design
        if asyncio.iscoroutine(result):
            asyncio.run(result)

    def _bash(self, code: str, where: str) -> None:
        if is_install_block(code):
            check_install_block(code, where)
            print(f"{where}: install commands checked against pyproject.toml, not run")
            return
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", code], env=env, start_new_session=True)
        self.sessions.append(proc)
        try:
            code_ = proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{where}: the bash sample did not finish in {BLOCK_TIMEOUT_S} s") from None
        if code_ != 0:
            raise AssertionError(f"{where}: the bash sample exited {code_}")

    def close(self) -> None:
        for name in [n for n, v in self.namespace.items() if hasattr(v, "close") and n in ("db", "adb")]:
            try:
                closing = self.namespace[name].close()
                if asyncio.iscoroutine(closing):
                    asyncio.run(closing)
            except Exception:  # noqa: BLE001 - closing what a sample left open; its error was reported
                pass
        for proc in self.sessions:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    continue


def main(path: str) -> int:
    page = Page(Path(path).resolve())
    try:
        for sample in samples(page.path):
            if sample.language in EXECUTED:
                page.run(sample)
    except BaseException:  # noqa: BLE001 - report which sample failed, then fail
        traceback.print_exc()
        return 1
    finally:
        page.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
