"""The Arrow Flight (gRPC) face of ``omendb serve``.

* ``do_put``  — a record-batch stream into ``add`` / ``upsert`` (or ``create_table`` from data);
* ``do_get``  — results out as Arrow: ``search``, ``get``, ``scan``;
* ``do_action`` — everything else, JSON in and out (tables, delete, count, stats, ...).

Every call runs against the one embedded :class:`~omendb.Database` the server holds:
writes to a table are serialised by the table, reads run in parallel on gRPC's threads.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable

import pyarrow as pa
import pyarrow.flight as flight

from ..database import Database
from ..embedding import embedding_from_record
from ..errors import InvalidArgumentError
from ..index.configs import index_config_from_dict
from ..query.filters import check_bounded_predicate
from ..wire import decode, decode_schema, decode_vectors, encode, error_text, table_description
from .limits import check_columns, check_embedded, check_search

__all__ = ["OmenFlightServer"]


class _TokenMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call without ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> None:
        given = (headers.get("authorization") or [""])[0].encode()
        if not hmac.compare_digest(given, self._expected):
            raise flight.FlightUnauthenticatedError("omendb:AuthenticationError:missing or wrong bearer token")
        return None


class OmenFlightServer(flight.FlightServerBase):
    """Serves one database over Arrow Flight."""

    def __init__(self, db: Database, location: str, *, token: str | None = None,
                 max_message_bytes: int = 256 << 20, unsafe_filters: bool = False) -> None:
        middleware = {"auth": _TokenMiddlewareFactory(token)} if token else {}
        super().__init__(location, middleware=middleware)
        self.db = db
        self.max_message_bytes = max_message_bytes
        self.unsafe_filters = unsafe_filters
        self._actions: dict[str, Callable[[dict[str, Any]], Any]] = {
            "health": lambda body: {"status": "ok"},
            "list_tables": lambda body: {"tables": self.db.table_names()},
            "create_table": self._create_table,
            "open_table": lambda body: table_description(self.db.open_table(body["table"])),
            "drop_table": lambda body: self.db.drop_table(body["table"]),
            "delete": self._delete,
            "count": lambda body: {"count": self._table(body).count()},
            "stats": lambda body: self._table(body).stats(),
            "version": lambda body: {"version": self._table(body).version},
            "versions": lambda body: {"versions": self._table(body).versions()},
            "flush": lambda body: self._table(body).flush(),
            "compact": lambda body: self._table(body).compact(),
            "create_index": lambda body: self._table(body).create_index(**_index_params(body.get("params", {}))),
            "create_text_index": lambda body: self._table(body).create_text_index(
                body.get("columns"), language=body.get("language", "english"), k1=body.get("k1", 1.5),
                b=body.get("b", 0.75)),
            "wait_for_index": lambda body: {"done": self._table(body).wait_for_index(body.get("timeout"))},
        }

    def _table(self, body: dict[str, Any]) -> Any:
        return self.db.open_table(body["table"])

    def _where(self, where: Any) -> str | None:
        """A client's ``where``: only predicates of bounded cost unless the server allows any SQL."""
        return where if where is None or self.unsafe_filters else check_bounded_predicate(where)

    @staticmethod
    def _command(data: Any) -> dict[str, Any]:
        """A request's JSON object (a ticket, descriptor or action body)."""
        try:
            command = decode(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"the request is not a JSON object: {exc}") from None
        if not isinstance(command, dict):
            raise InvalidArgumentError(f"the request must be a JSON object, got {type(command).__name__}")
        return command

    # ----------------------------------------------------------------- actions
    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return [(name, f"omendb {name}") for name in sorted(self._actions)]

    def do_action(self, context: flight.ServerCallContext, action: flight.Action):
        handler = self._actions.get(action.type)
        if handler is None:
            raise flight.FlightServerError(f"omendb:ValueError:unknown action {action.type!r}")
        result = self._guard(lambda: handler(self._command(action.body)))
        yield flight.Result(pa.py_buffer(encode({} if result is None else result)))

    def _create_table(self, body: dict[str, Any]) -> dict[str, Any]:
        options = _create_options(body.get("options", {}))
        if "schema" in options:
            options["schema"] = decode_schema(options["schema"])
            check_columns(len(options["schema"]))
        return table_description(self.db.create_table(body["table"], **options))

    def _delete(self, body: dict[str, Any]) -> dict[str, int]:
        table = self._table(body)
        if body.get("where") is not None:
            return {"deleted": table.delete(where=self._where(body["where"]))}
        return {"deleted": table.delete(body.get("ids", []))}

    # ---------------------------------------------------------------- streams
    def do_put(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
               reader: flight.MetadataRecordBatchReader, writer: flight.FlightMetadataWriter) -> None:
        def run() -> dict[str, Any]:
            command = self._command(descriptor.command)
            data = self._read_limited(reader)
            check_columns(data.num_columns)
            op = command.get("op")
            if op == "create_table":
                options = _create_options(command.get("options", {}))
                options.pop("schema", None)
                if options.get("embedding") is not None:
                    check_embedded(data.num_rows, _Embedded(options["embedding"]))
                return table_description(self.db.create_table(command["table"], data=data, **options))
            table = self._table(command)
            check_embedded(data.num_rows, table)
            if op == "add":
                return {"rows": table.add(data)}
            if op == "insert":
                return {"ids": table.insert(data).to_pylist()}
            if op == "upsert":
                return {"rows": table.upsert(data)}
            raise InvalidArgumentError(f"unknown put operation {op!r}")

        writer.write(pa.py_buffer(encode(self._guard(run))))

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.RecordBatchStream:
        def run() -> pa.Table:
            command = self._command(ticket.ticket)
            table = self._table(command)
            op = command.get("op")
            if op == "search":
                queries = _queries(command)
                check_search((1,) if queries is None or isinstance(queries, str) else
                             (len(queries), 0) if isinstance(queries, list) else queries.shape, command.get("k", 10))
                if isinstance(queries, list):
                    check_embedded(len(queries), table)
                return table.search(queries, k=command.get("k", 10), recall=command.get("recall"),
                                    where=self._where(command.get("where")),
                                    columns=command.get("columns"), exact=command.get("exact", False),
                                    ef=command.get("ef"), **_text_options(command))
            if op == "get":
                return table.get(command["ids"], columns=command.get("columns"))
            if op == "scan":
                return table.to_arrow()
            raise InvalidArgumentError(f"unknown get operation {op!r}")

        return flight.RecordBatchStream(self._guard(run))

    def _read_limited(self, reader: flight.MetadataRecordBatchReader) -> pa.Table:
        """Read a put stream, refusing more than ``max_message_bytes`` of data."""
        batches, total = [], 0
        for chunk in reader:
            total += chunk.data.nbytes
            if total > self.max_message_bytes:
                raise InvalidArgumentError(f"request too large: more than {self.max_message_bytes} bytes in one write; "
                                 "split it into smaller batches")
            batches.append(chunk.data)
        return pa.Table.from_batches(batches, schema=reader.schema)

    @staticmethod
    def _guard(call: Callable[[], Any]) -> Any:
        """Run ``call``; turn any error into a Flight error the client maps back to its type."""
        try:
            return call()
        except flight.FlightError:
            raise
        except KeyError as exc:
            if type(exc) is KeyError:  # a missing field in the request
                raise flight.FlightServerError(f"omendb:ValueError:missing field {exc.args[0]!r}") from None
            raise flight.FlightServerError(error_text(exc)) from None
        except Exception as exc:  # noqa: BLE001 - every error goes back to the client
            raise flight.FlightServerError(error_text(exc)) from None


#: What a client may pass to ``create_table`` (the rest of its arguments are the server's).
_CREATE_OPTIONS = frozenset({"dim", "metric", "schema", "id_column", "vector_column", "format", "exist_ok", "index",
                             "embedding", "source_column"})


def _create_options(options: Any) -> dict[str, Any]:
    """A client's ``create_table`` options, checked; ``index`` becomes an :class:`HnswConfig`."""
    if not isinstance(options, dict):
        raise InvalidArgumentError(f"create_table options must be a JSON object, got {type(options).__name__}")
    unknown = sorted(set(options) - _CREATE_OPTIONS)
    if unknown:
        raise InvalidArgumentError(f"unknown create_table option(s): {', '.join(unknown)}")
    options = dict(options)
    if options.get("embedding") is not None:  # (an adapter's record: the server makes the function)
        record = options["embedding"]
        made = None
        if isinstance(record, dict) and isinstance(record.get("params", {}), dict):
            try:
                made = embedding_from_record(record)
            except TypeError:  # (params the adapter does not take)
                made = None
        if made is None:
            raise InvalidArgumentError(f"embedding must name one of omendb's embedding adapters, got {record!r}")
        options["embedding"] = made
    return _index_params(options)


def _index_params(params: Any) -> dict[str, Any]:
    """``params`` with its ``index`` object (if any) made an index config."""
    if not isinstance(params, dict):
        raise InvalidArgumentError(f"expected a JSON object, got {type(params).__name__}")
    params = dict(params)
    index = params.get("index")
    if index is not None:
        if not isinstance(index, dict):
            raise InvalidArgumentError(f"index must be an object (an index config), got {type(index).__name__}")
        params["index"] = index_config_from_dict(index)
    return params


class _Embedded:
    """What :func:`check_embedded` needs of a table not made yet: its embedding and dim."""

    def __init__(self, embedding: Any) -> None:
        self.embedding = embedding
        dim = getattr(embedding, "dim", None)
        self.dim = dim if isinstance(dim, int) else 1


def _queries(command: dict[str, Any]) -> Any:
    """A search command's query: vectors (``q``), text to embed (``q_text``: a string or a
    list of them), or None."""
    if command.get("q_text") is not None:
        if command.get("q") is not None:
            raise InvalidArgumentError("give q (vectors) or q_text (text to embed), not both")
        given = command["q_text"]
        if not (isinstance(given, str) or (isinstance(given, list) and given
                                           and all(isinstance(t, str) for t in given))):
            raise InvalidArgumentError("q_text must be a string or a non-empty list of strings")
        return given
    return None if command.get("q") is None else decode_vectors(command["q"])


def _text_options(command: dict[str, Any]) -> dict[str, Any]:
    """The text-search arguments of a search command (none when it has no ``text``)."""
    if command.get("text") is None:
        return {}
    return {"text": command["text"], "vector_weight": command.get("vector_weight", 1.0),
            "text_weight": command.get("text_weight", 1.0)}
