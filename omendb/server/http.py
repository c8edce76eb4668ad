"""The HTTP JSON face of ``omendb serve`` (FastAPI; OpenAPI at ``/openapi.json``).

Rows travel as JSON objects (vectors as arrays of numbers). Errors come back as
``{"error": <exception type>, "message": ...}`` with a status that fits: 400 bad input,
401 no/wrong token, 404 missing table, 409 existing table or key, 413 request too large.
"""

from __future__ import annotations

import hmac
from typing import Any, Literal, Optional

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import errors
from ..errors import InvalidArgumentError
from ..database import Database
from ..errors import TableLockedError
from ..query.filters import check_bounded_predicate
from ..wire import table_description
from .limits import MAX_COLUMNS, MAX_QUERIES, check_columns, check_embedded, check_search

__all__ = ["create_app"]

_STATUS = {
    errors.TableNotFoundError: 404, errors.TableExistsError: 409, errors.DuplicateKeyError: 409,
    errors.ReadOnlyError: 403, TableLockedError: 409, errors.ClosedError: 503,
}


class CreateTable(BaseModel):
    """An empty table: its name, dimension and metric, and optional metadata columns."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    dim: int = Field(ge=1, le=65_536)
    metric: Literal["l2", "cosine", "dot"] = "l2"
    columns: dict[str, Literal["int64", "float64", "string", "bool"]] = Field(
        default_factory=dict, max_length=MAX_COLUMNS - 2, description="metadata columns and their types")
    id_type: Literal["int64", "string"] = "int64"
    exist_ok: bool = False


class Rows(BaseModel):
    """Rows to add or upsert: objects with the vector column and any metadata columns."""

    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]] = Field(min_length=1)


class Delete(BaseModel):
    """Delete by primary keys or by an SQL predicate (exactly one of them)."""

    model_config = ConfigDict(extra="forbid")
    ids: Optional[list[int | str]] = None
    where: Optional[str] = None


class Search(BaseModel):
    """One query vector (``vector``) or several (``vectors``), or text the table embeds
    into them (``query``, ``queries``); words to search for (``text``, in the table's text
    index); or one vector and ``text`` (hybrid)."""

    model_config = ConfigDict(extra="forbid")
    vector: Optional[list[float]] = None
    vectors: Optional[list[list[float]]] = Field(None, max_length=MAX_QUERIES)
    query: Optional[str] = Field(None, max_length=10_000,
                                 description="text to embed as the query vector (a table with an embedding function)")
    queries: Optional[list[str]] = Field(None, min_length=1, max_length=MAX_QUERIES,
                                         description="several texts to embed")
    k: int = Field(10, ge=1, le=10_000)
    where: Optional[str] = None
    columns: Optional[list[str]] = None
    exact: bool = False
    ef: Optional[int] = Field(None, ge=1, le=100_000)
    recall: Optional[float] = Field(None, gt=0, le=1, description="recall@10 to aim for (instead of ef)")
    text: Optional[str] = Field(None, max_length=10_000, description="words to search for (BM25; with vector: hybrid)")
    vector_weight: float = Field(1.0, ge=0, le=1e6)
    text_weight: float = Field(1.0, ge=0, le=1e6)


class TextIndex(BaseModel):
    """A full-text index over string columns (see ``Table.create_text_index``)."""

    model_config = ConfigDict(extra="forbid")
    columns: list[str] = Field(..., min_length=1, max_length=64)
    language: Optional[str] = "english"
    k1: float = 1.5
    b: float = 0.75


def _type(name: str):
    import pyarrow as pa

    return {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_()}[name]


def _json_rows(table: Any) -> list[dict[str, Any]]:
    return table.to_pylist()


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413, counting the
    bytes as they arrive (a chunked body has no ``Content-Length`` to trust), so at most
    ``max_bytes`` of a request are ever held in memory."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(send)
            return
        body, more = [], True
        received = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._too_large(send)
                return
            body.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()  # (a disconnect, once the response is under way)

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        response = JSONResponse({"error": "RequestTooLarge", "message": f"request body over {self.max_bytes} bytes"},
                                status_code=413, headers={"connection": "close"})
        await response({"type": "http"}, None, send)


def create_app(db: Database, *, token: str | None = None, max_request_bytes: int = 16 << 20,
               public_docs: bool = False, unsafe_filters: bool = False) -> FastAPI:
    """The FastAPI application serving ``db``.

    Args:
        token: require ``Authorization: Bearer <token>`` on every route, the API's own
            description (``/docs``, ``/redoc``, ``/openapi.json``) included.
        max_request_bytes: the largest request body accepted (413 beyond it).
        public_docs: serve the API description without the token.
        unsafe_filters: accept any SQL in ``where`` (by default only functions whose cost
            is bounded by the rows they read: ``omendb.query.filters.BOUNDED_FUNCTIONS``).
    """
    docs_open = token is None or public_docs
    app = FastAPI(title="omendb", description="omendb vector store: tables, writes and kNN search over HTTP.",
                  version=__import__("omendb").__version__,
                  **({} if docs_open else {"docs_url": None, "redoc_url": None, "openapi_url": None}))
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            raise HTTPException(401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def predicate(where: str | None) -> str | None:
        return where if where is None or unsafe_filters else check_bounded_predicate(where)

    @app.exception_handler(errors.OmenError)
    async def omen_error(request: Request, exc: errors.OmenError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=status)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=400)

    @app.exception_handler(TypeError)
    async def type_error(request: Request, exc: TypeError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=400)

    secured = [Depends(authorize)]
    if not docs_open:  # the API's description, behind the token like everything else
        @app.get("/openapi.json", dependencies=secured, include_in_schema=False)
        def openapi() -> dict[str, Any]:
            return app.openapi()

        @app.get("/docs", dependencies=secured, include_in_schema=False)
        def docs() -> Any:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="omendb API")

    @app.get("/health", dependencies=secured)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/tables", dependencies=secured)
    def list_tables() -> dict[str, list[str]]:
        return {"tables": db.table_names()}

    @app.post("/tables", dependencies=secured, status_code=201)
    def create_table(body: CreateTable) -> dict[str, Any]:
        import pyarrow as pa

        fields = [pa.field("id", _type(body.id_type), nullable=False),
                  pa.field("vector", pa.list_(pa.float32(), body.dim), nullable=False)]
        taken = [name for name in body.columns if name in ("id", "vector") or name.startswith("_")]
        if taken:
            raise errors.SchemaError(f"metadata column name(s) {', '.join(map(repr, taken))} are taken: 'id' and "
                                     "'vector' are the key and vector columns (id_type sets the key's type), and "
                                     "names starting with '_' are reserved")
        check_columns(len(body.columns) + 2)
        fields += [pa.field(name, _type(kind)) for name, kind in body.columns.items()]
        return table_description(db.create_table(body.name, schema=pa.schema(fields), metric=body.metric,
                                     exist_ok=body.exist_ok))

    @app.get("/tables/{name}", dependencies=secured)
    def get_table(name: str) -> dict[str, Any]:
        return table_description(db.open_table(name))

    @app.delete("/tables/{name}", dependencies=secured)
    def drop_table(name: str) -> dict[str, str]:
        db.drop_table(name)
        return {"dropped": name}

    @app.post("/tables/{name}/add", dependencies=secured)
    def add(name: str, body: Rows) -> dict[str, int]:
        table = db.open_table(name)
        check_embedded(len(body.rows), table)
        return {"added": table.add(body.rows)}

    @app.post("/tables/{name}/upsert", dependencies=secured)
    def upsert(name: str, body: Rows) -> dict[str, int]:
        table = db.open_table(name)
        check_embedded(len(body.rows), table)
        return {"upserted": table.upsert(body.rows)}

    @app.post("/tables/{name}/delete", dependencies=secured)
    def delete(name: str, body: Delete) -> dict[str, int]:
        table = db.open_table(name)
        if (body.ids is None) == (body.where is None):
            raise InvalidArgumentError("give ids or where, exactly one of them")
        return {"deleted": table.delete(body.ids) if body.ids is not None else table.delete(where=predicate(body.where))}

    @app.post("/tables/{name}/search", dependencies=secured)
    def search(name: str, body: Search) -> dict[str, Any]:
        table = db.open_table(name)
        given = [name for name in ("vector", "vectors", "query", "queries") if getattr(body, name) is not None]
        if len(given) > 1:
            raise InvalidArgumentError(f"give one of vector, vectors, query and queries, not {' and '.join(given)}")
        if not given and body.text is None:
            raise InvalidArgumentError("give vector (one query), vectors (several), query or queries (text to "
                                       "embed), text, or a query and text")
        many = body.vectors if body.vectors is not None else body.queries
        check_search((len(many), 0) if many is not None else (1,), body.k)
        if body.queries is not None:
            check_embedded(len(body.queries), table)
        query: Any = body.query if body.query is not None else body.queries
        if body.vector is not None or body.vectors is not None:
            with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which search() refuses by name
                query = np.asarray(body.vector if body.vector is not None else body.vectors, dtype=np.float32)
        text = {} if body.text is None else {"text": body.text, "vector_weight": body.vector_weight,
                                             "text_weight": body.text_weight}
        result = table.search(query, k=body.k, where=predicate(body.where), columns=body.columns, exact=body.exact,
                              ef=body.ef, recall=body.recall, **text)
        return {"results": _json_rows(result)}

    @app.post("/tables/{name}/text_index", dependencies=secured)
    def create_text_index(name: str, body: TextIndex) -> dict[str, Any]:
        db.open_table(name).create_text_index(body.columns, language=body.language, k1=body.k1, b=body.b)
        return {"created": True}

    @app.get("/tables/{name}/stats", dependencies=secured)
    def stats(name: str) -> dict[str, Any]:
        return db.open_table(name).stats()

    return app
