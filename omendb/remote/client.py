"""``omendb.connect``: a remote database with the embedded Database/Table API, over Arrow Flight."""

from __future__ import annotations

import time
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from ..api import Table
from ..convert import to_arrow_table
from ..embedding import Embedding, embedding_record, is_text_query
from ..errors import ArgumentTypeError, ClosedError, InvalidArgumentError, OmenError
from ..index.configs import IndexConfig, check_index_config
from ..shorthand import ShorthandMixin
from ..wire import (DEFAULT_PORT, AuthenticationError, decode, decode_schema, encode, encode_schema,
                       encode_vectors, error_from_text)

__all__ = ["connect", "RemoteDatabase", "RemoteTable", "normalise_uri"]


def normalise_uri(uri: str) -> str:
    """``host:port`` or ``grpc://host:port`` -> ``grpc://host:port`` (the port defaults to 6334)."""
    if "://" not in uri:
        uri = f"grpc://{uri}"
    parsed = urlparse(uri)
    if parsed.scheme not in ("grpc", "grpc+tcp"):
        raise InvalidArgumentError(f"omendb.connect speaks Arrow Flight: use grpc://host:port, not {uri!r}")
    if not parsed.hostname:
        raise InvalidArgumentError(f"no host in {uri!r}")
    return f"grpc://{parsed.hostname}:{parsed.port or DEFAULT_PORT}"


class _Channel:
    """One Flight client plus the call options (token, timeout) and error mapping."""

    def __init__(self, uri: str, token: str | None, timeout: float | None) -> None:
        self.uri = normalise_uri(uri)
        self.client = flight.FlightClient(self.uri)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self.options = flight.FlightCallOptions(headers=headers, timeout=timeout)
        self.timeout = timeout
        self.closed = False

    def _raise(self, exc: flight.FlightError) -> None:
        mapped = error_from_text(str(exc))
        if mapped is None and isinstance(exc, flight.FlightUnauthenticatedError):
            mapped = AuthenticationError(f"{self.uri}: missing or wrong bearer token")
        if mapped is None and isinstance(exc, flight.FlightUnavailableError):
            mapped = ConnectionError(f"cannot reach the omendb server at {self.uri}: {exc}")
        raise (mapped or OmenError(str(exc))) from None

    def action(self, name: str, body: dict[str, Any] | None = None) -> Any:
        if self.closed:
            raise ClosedError(f"connection to {self.uri} is closed")
        try:
            results = list(self.client.do_action(flight.Action(name, encode(body or {})), options=self.options))
        except flight.FlightError as exc:
            self._raise(exc)
        return decode(results[0].body) if results else {}

    def get(self, command: dict[str, Any]) -> pa.Table:
        try:
            return self.client.do_get(flight.Ticket(encode(command)), options=self.options).read_all()
        except flight.FlightError as exc:
            self._raise(exc)

    def put(self, command: dict[str, Any], data: pa.Table) -> Any:
        try:
            writer, reader = self.client.do_put(flight.FlightDescriptor.for_command(encode(command)), data.schema,
                                                options=self.options)
            writer.write_table(data, max_chunksize=64 * 1024)
            writer.done_writing()
            reply = reader.read()
            writer.close()
        except flight.FlightError as exc:
            self._raise(exc)
        return decode(reply)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.close()


class RemoteTable(Table):
    """A table on an omendb server: the same :class:`omendb.Table` contract as an embedded one."""

    def __init__(self, channel: _Channel, info: dict[str, Any]) -> None:
        self._channel = channel
        self.name: str = info["name"]
        self._schema = decode_schema(info["schema"])
        self._dim: int = info["dim"]
        self._metric: str = info["metric"]
        self.id_column: str = info["id_column"]
        self.vector_column: str = info["vector_column"]
        self._format: str = info.get("format", "arrow")
        self._embedding: dict[str, Any] | None = info.get("embedding")

    def __repr__(self) -> str:
        return f"<omendb.RemoteTable {self.name!r} on {self._channel.uri}>"

    schema = property(lambda self: self._schema, doc="The table's Arrow schema.")
    dim = property(lambda self: self._dim, doc="Number of components of every vector.")
    metric = property(lambda self: self._metric, doc="Distance metric.")
    format = property(lambda self: self._format, doc="Segment file format on the server.")
    embedding = property(lambda self: self._embedding,
                         doc="The table's embedding function record (name, params, source_column), or None.")

    def _body(self, **extra: Any) -> dict[str, Any]:
        return {"table": self.name, **extra}

    # writes
    def add(self, data: Any) -> int:
        """Append rows (any input ``Table.add`` accepts); returns once durable on the server."""
        return self._channel.put(self._body(op="add"), to_arrow_table(data, self.vector_column))["rows"]

    def insert(self, data: Any) -> pa.Array:
        """Like :meth:`add`, but return the primary keys of the new rows."""
        return pa.array(self._channel.put(self._body(op="insert"), to_arrow_table(data, self.vector_column))["ids"])

    def upsert(self, data: Any) -> int:
        """Insert rows, replacing rows with the same primary key."""
        return self._channel.put(self._body(op="upsert"), to_arrow_table(data, self.vector_column))["rows"]

    def delete(self, ids: Any = None, *, where: str | None = None) -> int:
        """Delete rows by primary key, or every row matching ``where``; returns the count."""
        if (ids is None) == (where is None):
            raise InvalidArgumentError("delete() takes ids or where=, exactly one of them")
        if ids is not None:
            ids = _ids_list(ids)
        return self._channel.action("delete", self._body(ids=ids, where=where))["deleted"]

    # reads
    def search(self, q: Any = None, k: int = 10, *, text: str | None = None, where: str | None = None,
               columns: Sequence[str] | None = None, exact: bool = False, ef: int | None = None,
               recall: float | None = None, vector_weight: float = 1.0, text_weight: float = 1.0) -> pa.Table:
        """Nearest neighbours of ``q`` (1-D: one query; 2-D: several, with ``_query``), rows
        matching ``text``, or both fused (as :meth:`omendb.Table.search`). A string ``q``
        (or a list of them) is embedded by the server, with the table's embedding function."""
        if is_text_query(q):  # (embedded by the server, with the table's embedding function)
            query = {"q_text": q if isinstance(q, str) else list(q)}
        else:
            query = {"q": None if q is None else encode_vectors(q)}
        return self._channel.get(self._body(op="search", **query, k=k,
                                            where=where, columns=None if columns is None else list(columns),
                                            exact=exact, ef=ef, recall=recall, text=text,
                                            vector_weight=vector_weight, text_weight=text_weight))

    def create_text_index(self, columns: str | Sequence[str], *, language: str | None = "english",
                          k1: float = 1.5, b: float = 0.75) -> None:
        """Index string ``columns`` for ``search(text=...)`` (as :meth:`omendb.Table.create_text_index`)."""
        self._channel.action("create_text_index", self._body(
            columns=[columns] if isinstance(columns, str) else list(columns), language=language, k1=k1, b=b))

    def get(self, ids: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows with the given primary keys, in the order asked."""
        return self._channel.get(self._body(op="get", ids=_ids_list(ids),
                                            columns=None if columns is None else list(columns)))

    def to_arrow(self) -> pa.Table:
        """Every live row."""
        return self._channel.get(self._body(op="scan"))

    def count(self) -> int:
        return self._channel.action("count", self._body())["count"]

    @property
    def version(self) -> int:
        return self._channel.action("version", self._body())["version"]

    def versions(self) -> list[dict[str, Any]]:
        return self._channel.action("versions", self._body())["versions"]

    def stats(self) -> dict[str, Any]:
        return self._channel.action("stats", self._body())

    # maintenance
    def flush(self) -> None:
        self._channel.action("flush", self._body())

    def compact(self) -> dict[str, Any]:
        return self._channel.action("compact", self._body())

    def create_index(self, m: int = 16, ef_construction: int = 200, **params: Any) -> None:
        if params.get("index") is not None:
            params["index"] = check_index_config(params["index"]).to_dict()
        self._channel.action("create_index", self._body(params={"m": m, "ef_construction": ef_construction,
                                                                **params}))

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait until every segment that should have an index has one; False on ``timeout``.

        Waits in server-side steps of half the connection's call timeout, so a long build
        does not outlast the deadline of one call.
        """
        step = None if self._channel.timeout is None else self._channel.timeout / 2
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            bounds = [b for b in (step, None if deadline is None else max(0.0, deadline - time.monotonic()))
                      if b is not None]
            wait = min(bounds) if bounds else None
            if self._channel.action("wait_for_index", self._body(timeout=wait))["done"]:
                return True
            if wait is None or (deadline is not None and time.monotonic() >= deadline):
                return False


def _ids_list(ids: Any) -> list:
    if isinstance(ids, (str, bytes, int, np.integer)):
        ids = [ids]
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids.to_pylist()
    return np.asarray(ids).tolist() if isinstance(ids, np.ndarray) else list(ids)


class RemoteDatabase(ShorthandMixin):
    """A database on an omendb server, with the embedded Database API and its shorthand."""

    def __init__(self, uri: str, token: str | None = None, timeout: float | None = None, *,
                 dim: int | None = None, metric: str = "cosine") -> None:
        self._default_dim, self._default_metric = dim, metric
        self._channel = _Channel(uri, token, timeout)
        self.uri = self._channel.uri
        self._channel.action("health")  # fail now, clearly, if the server is not there

    def __repr__(self) -> str:
        return f"<omendb.RemoteDatabase {self.uri}>"

    def table_names(self) -> list[str]:
        return self._channel.action("list_tables")["tables"]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.table_names()

    def create_table(self, name: str, data: Any = None, *, dim: int | None = None, metric: str = "l2",
                     schema: pa.Schema | None = None, id_column: str = "id", vector_column: str = "vector",
                     format: str = "arrow", exist_ok: bool = False, index: IndexConfig | None = None,
                     embedding: Embedding | None = None, source_column: str | None = None) -> RemoteTable:
        """Create a table on the server (from ``data``, or empty with ``dim``/``schema``);
        the arguments are those of :meth:`omendb.Database.create_table`. ``embedding`` must
        be one of omendb's adapters (:class:`omendb.HashEmbedding`, ...): the server makes
        and runs it, on rows added without vectors and on string queries."""
        options: dict[str, Any] = {"metric": metric, "id_column": id_column, "vector_column": vector_column,
                                   "format": format, "exist_ok": exist_ok}
        if embedding is not None or source_column is not None:
            if embedding is not None and not isinstance(embedding, Embedding):
                raise ArgumentTypeError("over a server, embedding must be one of omendb's adapters "
                                        "(HashEmbedding, SentenceTransformerEmbedding, FastEmbedEmbedding): the server "
                                        f"makes the function itself, and cannot run a local {type(embedding).__name__}")
            options.update(embedding=None if embedding is None else embedding_record(embedding),
                           source_column=source_column)
        if index is not None:
            options["index"] = check_index_config(index).to_dict()
        if data is not None:
            if dim is not None:
                options["dim"] = dim
            info = self._channel.put({"op": "create_table", "table": name, "options": options},
                                     to_arrow_table(data, vector_column))
        else:
            options.update({"dim": dim} if schema is None else {"schema": encode_schema(schema), "dim": dim})
            info = self._channel.action("create_table", {"table": name, "options": options})
        return RemoteTable(self._channel, info)

    def open_table(self, name: str) -> RemoteTable:
        return RemoteTable(self._channel, self._channel.action("open_table", {"table": name}))

    def __getitem__(self, name: str) -> RemoteTable:
        return self.open_table(name)

    def drop_table(self, name: str) -> None:
        self._channel.action("drop_table", {"table": name})

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RemoteDatabase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(uri: str, token: str | None = None, *, timeout: float | None = None, dim: int | None = None,
            metric: str = "cosine") -> RemoteDatabase:
    """Connect to ``omendb serve`` at ``uri`` (``host:port``; ``grpc://`` is assumed).

    ``dim``/``metric`` configure the default table that ``add_batch`` creates.
    """
    return RemoteDatabase(uri, token=token, timeout=timeout, dim=dim, metric=metric)
