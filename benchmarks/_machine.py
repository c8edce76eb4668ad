"""Machine facts every benchmark report records (stdlib only: peer venvs import it too)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

__all__ = ["package_version", "cpu_model", "fs_type", "git_revision", "machine_section"]


def package_version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", None)
    except Exception:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def fs_type(path: Path) -> str:
    path = str(Path(path).resolve())
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                mount, fstype = parts[1], parts[2]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


def git_revision(package_dir: Path, *watched: str) -> str:
    """Commit of the checkout holding ``package_dir``, with "+dirty(...)" when ``watched``
    folders of it (default: the package's own) have local changes."""
    root = Path(package_dir).resolve().parent
    watched = watched or (Path(package_dir).name,)
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *watched],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + (f"+dirty({' or '.join(w + '/' for w in watched)})" if dirty else "")


def machine_section(m: dict, wall_s: float, libraries: str) -> list[str]:
    """The "## Machine" lines of a report: date, CPU, OS and work dir, ``libraries``, omendb."""
    return ["## Machine", "",
            f"- date (UTC): {m['date_utc']}; total wall time {wall_s:.0f} s",
            f"- CPU: {m['cpu_model']}, cpu_count {m['cpu_count']} (affinity {m['cpu_affinity']}), "
            f"RAM {m['memory_gib']} GiB, load average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end')}",
            f"- {m['platform']}; work dir {m['workdir']} ({m['workdir_fs']})",
            f"- {libraries}",
            f"- omendb {m['omendb']} ({m['omendb_git']}) from {m['omendb_path']}"]
