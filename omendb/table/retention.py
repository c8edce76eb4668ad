"""Automatic removal of old versions: each writable table's versions older than
``TableOptions.keep_versions_for`` (and the files only they reference) are removed in
the background, so compaction's superseded segments do not stay on disk for good.
"""

from __future__ import annotations

import threading
import warnings

from ..errors import OmenError
from .state import TableCore
from .versions import cleanup
from .workers import Workers, exiting

__all__ = ["Retention", "check_period"]


def check_period(keep_for: float) -> float:
    """Seconds between two checks: half the retention, within [1 s, 60 s] (a version is
    removed at most that long after it expires)."""
    return min(max(keep_for / 2.0, 1.0), 60.0)


class Retention:
    """Runs ``cleanup(older_than=keep_for)`` on the compaction worker (so it never runs
    beside a merge of the same table) every :func:`check_period` seconds while the table is open."""

    def __init__(self, core: TableCore, workers: Workers | None, keep_for: float | None) -> None:
        self._core = core
        self._workers = workers
        self._keep_for = keep_for
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False
        self._warned = False

    def start(self) -> None:
        """The first check now (versions a previous process left may have expired), then periodic ones."""
        if self._keep_for is None or self._workers is None:
            return
        self._submit()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _submit(self) -> None:
        core = self._core
        if self._closed or core.closing or core.closed or exiting():
            return
        self._workers.compactor.submit((id(core), "retention"), self._run, self._failed, on_done=self._arm)

    def _arm(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._timer = threading.Timer(check_period(self._keep_for), self._submit)
            self._timer.daemon = True
            self._timer.start()

    def _run(self) -> None:
        core = self._core
        if core.closing or core.closed or core.stopping:
            return
        if len(core.store.versions()) > 1:
            cleanup(core, self._keep_for, keep_last=1)

    def _failed(self, exc: BaseException) -> None:
        if self._core.closed or self._core.closing or self._warned:
            return
        self._warned = True  # once per table: the next checks retry quietly
        what = str(exc) if isinstance(exc, OmenError) else f"{type(exc).__name__}: {exc}"
        warnings.warn(f"omendb: removing old versions of table {self._core.name!r} failed ({what}); it is retried "
                      "and nothing was lost", RuntimeWarning, stacklevel=1)
