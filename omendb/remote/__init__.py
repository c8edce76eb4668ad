"""The client side of server mode: ``omendb.connect`` / ``omendb.connect_async``."""

from .client import RemoteDatabase, RemoteTable, connect
from .async_client import AsyncRemoteDatabase, AsyncRemoteTable, connect_async

__all__ = ["connect", "connect_async", "RemoteDatabase", "RemoteTable", "AsyncRemoteDatabase", "AsyncRemoteTable"]
