"""Versions: listing, time travel (checkout), refresh for readers, and cleanup of old files."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from ..errors import InvalidArgumentError, VersionNotFoundError
from ..storage.fileio import fsync_dir, remove_gradually
from .layout import MANIFESTS, SEGMENTS
from .registry import open_tables

__all__ = ["VersionsMixin"]


class VersionsMixin:
    """``versions()``, ``checkout()``, ``refresh()`` and ``cleanup()`` (mixed into ``Table``)."""

    def versions(self) -> list[dict[str, Any]]:
        """Every retained version, oldest first: number, time, what changed, rows, segments."""
        self._check_open()
        out = []
        for number in self._store.versions():
            try:
                manifest = self._store.load(number)
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

    def checkout(self, version: int):
        """A read-only table of ``version`` as it was published (writes raise ``ReadOnlyError``).

        Rows that were only in the writer's memtable at that time are not part of a
        version. The files of a checkout are kept by ``cleanup()`` while it is open.
        """
        self._check_open()
        available = self._store.versions()
        if version not in available:
            retained = f"retained: {available[0]}..{available[-1]}" if available else "none retained"
            raise VersionNotFoundError(f"table {self.name!r} has no version {version!r} ({retained})")
        return type(self)(self.name, self._dir, self._options, None, checkout=self._store.load(version))

    def refresh(self) -> int:
        """Adopt the newest published version (readers; the writer is always current)."""
        self._check_open()
        if self._read_only and self._checkout_version is None:
            self._manifest_mtime = self._manifests_mtime()
            latest = self._store.latest()
            if latest is not None and latest.version != self._manifest.version:
                self._load_manifest(latest)
        return self.version

    def _manifests_mtime(self) -> int:
        return os.stat(self._dir / MANIFESTS).st_mtime_ns

    def cleanup(self, older_than: float | dt.timedelta | None = None, keep_last: int = 1) -> dict[str, int]:
        """Remove old versions and the files only they reference; report what was freed.

        A version is removed when it is not among the ``keep_last`` newest, is older
        than ``older_than`` (seconds or a timedelta; ``None``: any age) and is not held
        by a table open in this process (a ``checkout()``, or a table of a read-only
        database). The newest version is always kept.
        Returns ``versions_removed``, ``files_removed`` and ``bytes_freed``.
        """
        self._check_writable()
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise InvalidArgumentError(f"keep_last must be an integer >= 1, got {keep_last!r}")
        if isinstance(older_than, dt.timedelta):
            older_than = older_than.total_seconds()
        cutoff = None if older_than is None else time.time() - float(older_than)
        with self._write_lock:
            numbers = self._store.versions()
            others = [t for t in open_tables(self._dir) if t is not self]
            pinned = {t._manifest.version for t in others}
            manifests = {}
            for n in numbers:
                try:
                    manifests[n] = self._store.load(n)
                except VersionNotFoundError:
                    continue
            numbers = sorted(manifests)
            keep = set(numbers[-keep_last:]) | pinned
            if cutoff is not None:
                keep |= {n for n, m in manifests.items() if m.created_at >= cutoff}
            drop = [n for n in numbers if n not in keep]
            in_use = {f for n in keep for f in _files(manifests[n])}
            for table in [self, *others]:  # what open tables of this process have mapped
                with table._lock:
                    in_use |= {f for h in table._segments
                               for f in (h.file, h.entry.deletions_file, h.entry.index_file) if f}
            unreferenced = {f for n in drop for f in _files(manifests[n])} - in_use
            # Manifests first: a crash in between leaves orphan files (removed on the next
            # open), never a retained version pointing at a missing file.
            for number in drop:
                self._store.path_of(number).unlink(missing_ok=True)
            fsync_dir(self._dir / MANIFESTS)
            freed = 0
            for name in unreferenced:
                path = self._dir / SEGMENTS / name
                try:
                    freed += path.stat().st_size
                except FileNotFoundError:
                    continue
                remove_gradually(path)  # (a concurrent log commit never waits long for it)
            fsync_dir(self._dir / SEGMENTS)
        return {"versions_removed": len(drop), "files_removed": len(unreferenced), "bytes_freed": freed}


def _files(manifest) -> set[str]:
    return {f for e in manifest.segments for f in (e.file, e.deletions_file, e.index_file) if f}
