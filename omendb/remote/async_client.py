"""``await omendb.connect_async(...)``: the remote API for asyncio code.

Each call runs the blocking Flight call on a worker thread (``asyncio.to_thread``), so
the event loop keeps running while the server works.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from .client import RemoteDatabase, RemoteTable

__all__ = ["connect_async", "AsyncRemoteDatabase", "AsyncRemoteTable"]


class _AsyncWrapper:
    """Turns every public method of the wrapped object into a coroutine function."""

    _wrapped: Any
    _plain = frozenset({"name", "schema", "dim", "metric", "format", "id_column", "vector_column", "uri"})

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._wrapped, name)
        if name in self._plain or not callable(value):
            return value

        @functools.wraps(value)
        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await asyncio.to_thread(value, *args, **kwargs)
            return AsyncRemoteTable(result) if isinstance(result, RemoteTable) else result

        return call


class AsyncRemoteTable(_AsyncWrapper):
    """A remote table whose methods are awaitable (``await tbl.search(q)``)."""

    def __init__(self, table: RemoteTable) -> None:
        self._wrapped = table

    def __repr__(self) -> str:
        return f"<omendb.AsyncRemoteTable {self._wrapped.name!r}>"


class AsyncRemoteDatabase(_AsyncWrapper):
    """A remote database whose methods are awaitable (``await db.open_table("docs")``)."""

    def __init__(self, db: RemoteDatabase) -> None:
        self._wrapped = db

    async def __aenter__(self) -> "AsyncRemoteDatabase":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_async(uri: str, token: str | None = None, *, timeout: float | None = None,
                        dim: int | None = None, metric: str = "cosine") -> AsyncRemoteDatabase:
    """Connect to ``omendb serve`` from asyncio code: every method is awaitable,
    the shorthand included (``ids = await db.add_batch(vectors)``)."""
    return AsyncRemoteDatabase(await asyncio.to_thread(RemoteDatabase, uri, token, timeout=timeout,
                                                       dim=dim, metric=metric))
