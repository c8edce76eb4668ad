"""Versions: listing them, following the newest (readers), and cleaning old ones up."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any, Callable

from ..errors import InvalidArgumentError, MissingFileError, TableNotFoundError, VersionNotFoundError
from ..storage.fileio import fsync_dir
from ..storage.layout import MANIFESTS, SEGMENTS
from ..storage.manifest import Manifest
from .registry import cleaning, open_tables, pins
from .state import TableCore

__all__ = ["list_versions", "Follower", "cleanup"]


def list_versions(core: TableCore) -> list[dict[str, Any]]:
    """Every retained version, oldest first: number, time, what changed, rows, segments."""
    out = []
    for number in core.store.versions():
        try:
            manifest = core.store.load(number)
        except VersionNotFoundError:  # removed by a cleanup() running meanwhile
            continue
        out.append({
            "version": number,
            "time": dt.datetime.fromtimestamp(manifest.created_at, tz=dt.timezone.utc),
            "change": manifest.change,
            "rows": sum(e.rows - e.deleted for e in manifest.segments),
            "segments": len(manifest.segments),
        })
    return out


class Follower:
    """Keeps a reader's table on the newest published version.

    A new manifest changes the folder's mtime, which is cheap to check before every
    read; a coarse-timestamp filesystem can hide two publishes in one tick, so the
    listing is also looked at once a second.
    """

    def __init__(self, core: TableCore) -> None:
        self._core = core
        self._mtime = self._manifests_mtime()
        self._listed_at = time.monotonic()  # (in an object store: when the store was last looked at)

    def _manifests_mtime(self) -> int:
        try:
            return os.stat(self._core.directory / MANIFESTS).st_mtime_ns
        except FileNotFoundError:
            raise TableNotFoundError(f"table {self._core.name!r} was dropped ({self._core.directory} is gone)") from None

    def before_read(self) -> None:
        now = time.monotonic()
        mirror = self._core.mirror
        if mirror is not None:  # a request to the store costs a round trip: look every poll_interval
            if now - self._listed_at > mirror.poll_interval:
                self.refresh()
            return
        if self._manifests_mtime() != self._mtime or now - self._listed_at > 1.0:
            self._listed_at = now
            self.refresh()

    def read(self, read: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``read(*args, **kwargs)`` on the newest version. A read that loses a race with
        the writer's ``cleanup()`` (a file of the version it is adopting, or has not
        mapped yet, is gone) looks again at the newest version and reads once more
        (mapped files stay readable once removed); the third loss is raised."""
        for attempt in range(3):
            try:
                self.before_read() if attempt == 0 else self.refresh()
                return read(*args, **kwargs)
            except (MissingFileError, VersionNotFoundError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def refresh(self) -> None:
        """Adopt the newest published version, if it is not the current one (in an object
        store: first copy it into the local cache, then trim the cache)."""
        mirror = self._core.mirror
        if mirror is not None:
            self._listed_at = time.monotonic()
            mirror.pull(self._core.directory, log=False)
        self._mtime = self._manifests_mtime()
        latest = self._core.store.latest()
        if latest is not None and latest.version != self._core.state.version:
            self._core.adopt(latest)
        if mirror is not None:
            in_use = {f for e in self._core.state.manifest.segments for f in e.files()}
            mirror.trim_cache(self._core.directory / SEGMENTS, in_use)


def cleanup(core: TableCore, older_than: float | dt.timedelta | None, keep_last: int) -> dict[str, int]:
    """Remove old versions and the files only they reference (see ``Table.cleanup``)."""
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise InvalidArgumentError(f"keep_last must be an integer >= 1, got {keep_last!r}")
    if isinstance(older_than, dt.timedelta):
        older_than = older_than.total_seconds()
    cutoff = None if older_than is None else time.time() - float(older_than)
    manifests: dict[int, Manifest] = {}

    def load_new() -> None:
        present = core.store.versions()
        for n in set(manifests) - set(present):  # (removed meanwhile)
            del manifests[n]
        for n in present:
            if n not in manifests:
                try:
                    manifests[n] = core.store.load(n)
                except VersionNotFoundError:
                    continue

    load_new()  # (old manifests never change: read them before taking the write lock)
    with core.write_lock, cleaning():
        load_new()  # versions published meanwhile
        others = [t for t in open_tables(core.directory) if t.core is not core]
        pinned = {t.core.state.version for t in others} | pins(core.directory)
        numbers = sorted(manifests)
        keep = set(numbers[-keep_last:]) | pinned
        if cutoff is not None:
            keep |= {n for n, m in manifests.items() if m.created_at >= cutoff}
        drop = [n for n in numbers if n not in keep]
        in_use = {f for n in keep for e in manifests[n].segments for f in e.files()}
        for table in [core, *(t.core for t in others)]:  # what open tables of this process have mapped
            in_use |= {f for h in table.state.segments for f in h.entry.files()}
        unreferenced = {f for n in drop for e in manifests[n].segments for f in e.files()} - in_use
        # Manifests first: a crash in between leaves orphan files (removed on the next
        # open), never a retained version pointing at a missing file. The store first:
        # it is the table, this folder a copy of it.
        if core.mirror is not None:
            core.mirror.remove(drop, unreferenced)
        for number in drop:
            core.store.path_of(number).unlink(missing_ok=True)
        fsync_dir(core.directory / MANIFESTS)
        freed = 0
        for name in unreferenced:
            path = core.directory / SEGMENTS / name
            try:
                freed += path.stat().st_size
            except FileNotFoundError:
                continue
            # A plain unlink: a process that has the file mapped keeps reading it. (Shrinking
            # it first, as the log's removal does, would kill such a process with SIGBUS.)
            path.unlink(missing_ok=True)
        fsync_dir(core.directory / SEGMENTS)
    return {"versions_removed": len(drop), "files_removed": len(unreferenced), "bytes_freed": freed}
