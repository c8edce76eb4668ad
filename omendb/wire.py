"""What client and server agree on: JSON commands, vectors, errors, table descriptions.

Flight actions, tickets and descriptors carry a JSON object; query vectors travel as
base64 little-endian float32 plus their shape; an error crosses the wire as
``omendb:<ExceptionType>:<message>`` so the client raises the same exception type; a
table is described by :func:`table_description`, the same object over Flight and HTTP.
"""

from __future__ import annotations

import base64
import builtins
import json
from typing import Any

import numpy as np
import pyarrow as pa

from . import errors
from .errors import ArgumentTypeError, AuthenticationError
from .storage.layout import schema_from_text as decode_schema
from .storage.layout import schema_to_text as encode_schema

__all__ = ["encode", "decode", "encode_vectors", "decode_vectors", "error_text", "error_from_text",
           "encode_schema", "decode_schema", "table_description", "DEFAULT_PORT", "DEFAULT_HTTP_PORT",
           "AuthenticationError"]

DEFAULT_PORT = 6334
DEFAULT_HTTP_PORT = 6335
_PREFIX = "omendb:"


_ERRORS: dict[str, type[BaseException]] = {name: getattr(errors, name) for name in errors.__all__}
for _name in ("ValueError", "TypeError", "KeyError", "PermissionError", "RuntimeError", "NotImplementedError"):
    _ERRORS[_name] = getattr(builtins, _name)


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_default).encode()


def decode(data: bytes | pa.Buffer | None) -> Any:
    raw = b"" if data is None else (data.to_pybytes() if isinstance(data, pa.Buffer) else bytes(data))
    return json.loads(raw) if raw else {}


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise ArgumentTypeError(f"cannot send {type(value).__name__} to the server")


def encode_vectors(q: Any) -> dict[str, Any]:
    """A query (1-D or 2-D) as JSON-safe base64 float32 and shape."""
    array = np.asarray(q, dtype=np.float32)
    return {"data": base64.b64encode(np.ascontiguousarray(array).astype("<f4").tobytes()).decode(),
            "shape": list(array.shape)}


def decode_vectors(obj: dict[str, Any]) -> np.ndarray:
    shape = tuple(int(s) for s in obj["shape"])
    data = np.frombuffer(base64.b64decode(obj["data"]), dtype="<f4")
    if data.size != int(np.prod(shape)):
        raise errors.InvalidVectorError(f"query holds {data.size} values, its shape says {shape}")
    return data.reshape(shape)


def table_description(table: Any) -> dict[str, Any]:
    """What a client needs to stand in for ``table``, and what HTTP's ``GET /tables/{name}`` shows."""
    return {"name": table.name, "dim": table.dim, "metric": table.metric, "format": table.format,
            "id_column": table.id_column, "vector_column": table.vector_column, "rows": table.count(),
            "version": table.version, "columns": {f.name: str(f.type) for f in table.schema},
            "schema": encode_schema(table.schema), "embedding": table.embedding}


def error_text(exc: BaseException) -> str:
    kind = type(exc).__name__ if type(exc).__name__ in _ERRORS else "OmenError"
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return f"{_PREFIX}{kind}:{message}"


def error_from_text(text: str) -> BaseException | None:
    """The exception a server error message stands for (None if it is not omendb's)."""
    start = text.find(_PREFIX)
    if start < 0:
        return None
    kind, _, message = text[start + len(_PREFIX):].partition(":")
    message = message.split(". Detail:")[0].strip()  # Flight appends transport details
    return _ERRORS.get(kind, errors.OmenError)(message)
