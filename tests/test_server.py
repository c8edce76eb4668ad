"""Server mode: a real `omendb serve` subprocess on loopback, used through Flight and HTTP."""

from __future__ import annotations

import asyncio
import json
import ipaddress
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import omendb
from conftest import TOKEN, Server, served_vectors as vectors, unique
from omendb.remote.client import RemoteTable

DIM = 8  # (conftest.SERVED_DIM)


class _BuildingChannel:
    """Stands in for a Flight channel whose server finishes its index after ``calls`` waits."""

    uri = "grpc://stand-in:6334"

    def __init__(self, call_timeout: float, calls: int) -> None:
        self.timeout, self.calls, self.waits = call_timeout, calls, []

    def action(self, name: str, body: dict) -> dict:
        assert name == "wait_for_index"
        self.waits.append(body["timeout"])
        time.sleep(body["timeout"])  # the server waits that long, then answers "not yet"
        self.calls -= 1
        return {"done": self.calls <= 0}


def _remote_table(channel) -> RemoteTable:
    table = object.__new__(RemoteTable)
    table._channel, table.name = channel, "t"
    return table


def test_remote_wait_for_index_waits_in_steps_within_the_call_deadline() -> None:
    channel = _BuildingChannel(call_timeout=0.2, calls=4)
    assert _remote_table(channel).wait_for_index() is True  # no overall timeout: until built
    assert channel.waits == [0.1] * 4  # each call well inside the connection's 0.2 s deadline


def test_remote_wait_for_index_honours_its_own_timeout() -> None:
    channel = _BuildingChannel(call_timeout=0.2, calls=100)
    assert _remote_table(channel).wait_for_index(timeout=0.25) is False
    assert len(channel.waits) == 3 and max(channel.waits) == 0.1 and sum(channel.waits) <= 0.25 + 1e-9


def test_async_client(server) -> None:
    async def main() -> list:
        db = await omendb.connect_async(server.uri, token=TOKEN)
        table = await db.create_table(unique("async"), data={"vector": vectors(50)})
        hits = await table.search(vectors(50)[9], k=1)
        count = await table.count()
        await db.close()
        return [hits["id"].to_pylist(), count]

    assert asyncio.run(main()) == [[9], 50]


# ------------------------------------------------------------------- security
def test_flight_refuses_missing_or_wrong_token(server) -> None:
    with pytest.raises(omendb.AuthenticationError):
        server.connect(token=None)
    with pytest.raises(omendb.AuthenticationError):
        server.connect(token="wrong")
    assert isinstance(server.connect().table_names(), list)


def test_http_refuses_missing_or_wrong_token(server) -> None:
    assert server.http("GET", "/tables", token=None)[0] == 401
    assert server.http("GET", "/health", token="wrong")[0] == 401
    assert server.http("GET", "/health") == (200, {"status": "ok"})


def test_server_listens_on_loopback_only(server) -> None:
    psutil = pytest.importorskip("psutil")
    listening = {c.laddr for c in psutil.Process(server.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    assert {addr.port for addr in listening} >= {server.port, server.http_port}
    for addr in listening:
        ip = ipaddress.ip_address(addr.ip)
        ip = getattr(ip, "ipv4_mapped", None) or ip  # gRPC reports ::ffff:127.0.0.1
        assert ip.is_loopback, f"listening on {addr.ip}"


# ------------------------------------------------------------------------ HTTP
def test_http_api_round_trip_and_error_codes(server) -> None:
    name = unique("http")
    status, info = server.http("POST", "/tables", {"name": name, "dim": DIM, "metric": "cosine",
                                                   "columns": {"lang": "string"}})
    assert status == 201 and info["dim"] == DIM
    rows = [{"id": i, "vector": v.tolist(), "lang": "en" if i % 2 else "de"} for i, v in enumerate(vectors(40))]
    assert server.http("POST", f"/tables/{name}/add", {"rows": rows}) == (200, {"added": 40})
    status, found = server.http("POST", f"/tables/{name}/search",
                                {"vector": rows[3]["vector"], "k": 3, "columns": ["id", "lang"]})
    assert status == 200 and found["results"][0]["id"] == 3 and set(found["results"][0]) == {"id", "lang", "_distance"}
    status, found = server.http("POST", f"/tables/{name}/search", {"vector": rows[3]["vector"], "k": 5,
                                                                   "where": "lang = 'de'"})
    assert {r["lang"] for r in found["results"]} == {"de"}
    assert server.http("POST", f"/tables/{name}/upsert", {"rows": rows[:1]})[0] == 200
    assert server.http("POST", f"/tables/{name}/delete", {"where": "lang = 'en'"}) == (200, {"deleted": 20})
    assert server.http("GET", f"/tables/{name}/stats")[1]["rows"] == 20
    assert server.http("GET", f"/tables/{name}")[1]["rows"] == 20
    # errors
    assert server.http("POST", f"/tables/{name}/add", {"rows": rows[:1]})[0] == 409  # duplicate id
    status, body = server.http("POST", f"/tables/{name}/search", {"vector": [1.0, 2.0], "k": 3})
    assert status == 400 and body["error"] == "DimensionError"
    assert server.http("GET", "/tables/nope")[0] == 404
    assert server.http("POST", "/tables", {"name": name, "dim": DIM})[0] == 409
    assert server.http("POST", "/tables", {"name": "../x", "dim": DIM})[0] == 400
    assert server.http("POST", f"/tables/{name}/search", {"k": 3})[0] == 400
    assert server.http("DELETE", f"/tables/{name}") == (200, {"dropped": name})


def test_http_request_size_limit(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from omendb.server.http import create_app

    with omendb.open(tmp_path / "db") as db:
        client = TestClient(create_app(db, max_request_bytes=1_000))
        big = {"rows": [{"vector": [0.0] * DIM}] * 100}
        response = client.post("/tables/x/add", json=big)
        assert response.status_code == 413


# ----------------------------------------------------------------- concurrency
def test_concurrent_writers_and_readers(server) -> None:
    name = unique("busy")
    server.connect().create_table(name, dim=DIM)
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            table = server.connect().open_table(name)
            for batch in range(10):
                ids = np.arange(20) + 1_000 * worker + 20 * batch
                table.add({"id": ids, "vector": vectors(20, seed=int(ids[0]))})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def reader() -> None:
        try:
            table = server.connect().open_table(name)
            for _ in range(20):
                table.search(vectors(1)[0], k=5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)] + \
              [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert server.connect().open_table(name).count() == 4 * 10 * 20


# ----------------------------------------------------------------- durability
def test_acknowledged_writes_survive_sigkill_of_the_server(tmp_path: Path) -> None:
    srv = Server(tmp_path / "db")
    try:
        table = srv.connect().create_table("t", dim=DIM)
        acked = []
        for batch in range(5):
            ids = np.arange(10) + 10 * batch
            table.add({"id": ids, "vector": vectors(10, seed=batch)})
            acked.extend(ids.tolist())
    finally:
        srv.proc.kill()
        srv.proc.wait()
    srv.start()
    try:
        again = srv.connect().open_table("t")
        assert sorted(again.to_arrow()["id"].to_pylist()) == acked
    finally:
        assert "all tables flushed" in srv.stop()


def test_sigterm_flushes_every_table(tmp_path: Path) -> None:
    srv = Server(tmp_path / "db", token=None)
    srv.connect(token=None).create_table("t", data={"vector": vectors(25)})
    assert "all tables flushed" in srv.stop(signal.SIGTERM)
    with omendb.open(tmp_path / "db") as db:
        table = db.open_table("t")
        assert table.count() == 25 and table.stats()["segments"] == 1 and table.stats()["memtable_rows"] == 0


# ----------------------------------------------------------------- schemathesis
def test_openapi_document_holds_under_generated_requests(tmp_path: Path) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings

    from omendb.server.http import create_app

    with omendb.open(tmp_path / "db") as db:
        db.create_table("docs", data={"vector": vectors(20)})
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(db))
        failures = []
        for operation in schema.get_all_operations():
            strategy = operation.ok().as_strategy()

            @settings(max_examples=15, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call()
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")

            from hypothesis import given

            given(strategy)(check)()
        assert not failures, failures


# ------------------------------------------------- what an outside attack found (issue 15)
def _chunked_post(port: int, path: str, body: bytes, token: str = TOKEN) -> int:
    """POST ``body`` with chunked transfer encoding (no Content-Length); the status."""
    import http.client

    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        con.putrequest("POST", path)
        con.putheader("content-type", "application/json")
        con.putheader("authorization", f"Bearer {token}")
        con.putheader("transfer-encoding", "chunked")
        con.endheaders()
        try:
            for start in range(0, len(body), 64 << 10):
                piece = body[start:start + (64 << 10)]
                con.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            con.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        return con.getresponse().status
    finally:
        con.close()


def test_http_body_limit_counts_a_chunked_body_as_it_arrives(tmp_path: Path) -> None:
    srv = Server(tmp_path / "db", TOKEN, "--max-request-mb", "1")
    try:
        name = unique("chunked")
        assert srv.http("POST", "/tables", {"name": name, "dim": DIM})[0] == 201
        rows = {"rows": [{"vector": [0.125] * DIM} for _ in range(30_000)]}  # ~2.1 MB of JSON
        body = json.dumps(rows).encode()
        assert len(body) > 2 << 20
        assert _chunked_post(srv.http_port, f"/tables/{name}/add", body) == 413
        small = json.dumps({"rows": rows["rows"][:100]}).encode()
        assert _chunked_post(srv.http_port, f"/tables/{name}/add", small) == 200
        assert srv.http("GET", f"/tables/{name}")[1]["rows"] == 100
    finally:
        srv.stop()


@pytest.mark.parametrize("column", ["vector", "id", "_hidden"])
def test_http_create_table_refuses_taken_column_names(server, column) -> None:
    name = unique("taken")
    status, body = server.http("POST", "/tables", {"name": name, "dim": DIM, "columns": {column: "string"}})
    assert (status, body["error"]) == (400, "SchemaError") and column in body["message"]
    assert name not in server.http("GET", "/tables")[1]["tables"]


def test_flight_tickets_and_commands_that_are_not_json_get_a_clear_error(server) -> None:
    import pyarrow.flight as flight

    client = flight.connect(server.uri)
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])
    for call in (lambda: client.do_get(flight.Ticket(b"\xff not json"), options).read_all(),
                 lambda: client.do_get(flight.Ticket(b"[1, 2]"), options).read_all(),
                 lambda: list(client.do_action(flight.Action("count", b"{"), options))):
        with pytest.raises(flight.FlightError) as info:
            call()
        assert "omendb:InvalidArgumentError" in str(info.value) and "Traceback" not in str(info.value)
    client.close()


def test_predicates_of_unbounded_cost_are_refused_by_the_server(server) -> None:
    name = unique("cost")
    db = server.connect()
    table = db.create_table(name, data={"vector": vectors(20), "lang": ["en"] * 20})
    for where in ("len(range(500000000)) > 0", "repeat(lang, 1000000000) = lang", "id IN (SELECT 1)",
                  "length(list_reduce(list_value('a', 'b'), lambda x, y: x || x || lang)) > 0",
                  "levenshtein(lang || 'aaaaaaaa', 'bbbbbbbb') > 0", "replace(lang, 'e', lang || lang) = 'x'"):
        with pytest.raises(omendb.FilterError, match="not allowed here"):
            table.search(vectors(1)[0], k=3, where=where)
        with pytest.raises(omendb.FilterError, match="not allowed here"):
            table.delete(where=where)
        status, body = server.http("POST", f"/tables/{name}/search", {"vector": [0.0] * DIM, "where": where})
        assert (status, body["error"]) == (400, "FilterError")
    assert table.search(vectors(1)[0], k=3, where="lower(lang) LIKE 'e%' AND id BETWEEN 0 AND 9").num_rows == 3
    assert table.count() == 20
    db.close()


def test_api_description_needs_the_token_unless_made_public(server, tmp_path: Path) -> None:
    for path in ("/openapi.json", "/docs"):
        assert server.http_raw("GET", path, token=None) in (401, 404)
        assert server.http_raw("GET", path) == 200
    assert server.http_raw("GET", "/redoc", token=None) in (401, 404)
    public = Server(tmp_path / "db", TOKEN, "--public-docs")
    try:
        assert public.http_raw("GET", "/openapi.json", token=None) == 200
        assert public.http("GET", "/tables", token=None)[0] == 401  # the API itself stays closed
    finally:
        public.stop()


def test_remote_create_table_takes_index_parameters(server) -> None:
    db = server.connect()
    table = db.create_table(unique("idx"), dim=DIM, index=omendb.HnswConfig(m=8, ef_search=32))
    assert table.stats()["index"]["m"] == 8 and table.stats()["index"]["ef_search"] == 32
    with pytest.raises(omendb.ArgumentTypeError, match="HnswConfig"):
        db.create_table(unique("idx"), dim=DIM, index={"m": 8})
    db.close()


def test_one_request_cannot_ask_for_unbounded_work(server) -> None:
    name = unique("bounds")
    db = server.connect()
    table = db.create_table(name, data={"vector": vectors(20)})
    with pytest.raises(omendb.InvalidArgumentError, match="more than 1,000,000 result rows"):
        table.search(vectors(200), k=10_000)
    with pytest.raises(omendb.InvalidArgumentError, match="at most 10,000"):
        table.search(np.zeros((10_001, DIM), np.float32), k=1)
    status, body = server.http("POST", f"/tables/{name}/search", {"vectors": [[0.1] * DIM] * 200, "k": 10_000})
    assert status == 400 and "result rows" in body["message"]
    status, _ = server.http("POST", "/tables", {"name": unique("wide"), "dim": DIM,
                                                "columns": {f"c{i}": "int64" for i in range(1_100)}})
    assert status in (400, 422)
    assert table.search(vectors(2), k=5).num_rows == 10
    db.close()


def test_text_and_hybrid_search_over_flight_and_http_equal_the_python_api(server) -> None:
    from test_text import assert_same_ranking, corpus

    texts = corpus(np.random.default_rng(3), 300)
    db = server.connect()
    name = unique("text")
    table = db.create_table(name, data={"id": np.arange(300), "summary": texts, "vector": vectors(300)})
    table.create_text_index("summary")
    assert table.wait_for_index(timeout=60)
    assert_same_ranking(table.search(text="fast arrow parser", k=10), dict(enumerate(texts)), "fast arrow parser", 10)
    q = vectors(1, seed=9)[0]
    hybrid = table.search(q, text="fast arrow parser", k=5, exact=True)
    vector_ids = table.search(q, k=20, exact=True)["id"].to_pylist()
    text_ids = table.search(text="fast arrow parser", k=20)["id"].to_pylist()
    fused: dict[int, float] = {}
    for ranking in (vector_ids, text_ids):
        for rank, row_id in enumerate(ranking, start=1):
            fused[row_id] = fused.get(row_id, 0.0) + 1 / (60 + rank)
    for row in hybrid.to_pylist():
        assert row["_relevance_score"] == pytest.approx(fused[row["id"]], rel=1e-6)
    with pytest.raises(omendb.InvalidArgumentError, match="empty"):
        table.search(text="  ", k=3)
    status, found = server.http("POST", f"/tables/{name}/search", {"text": "fast arrow parser", "k": 10,
                                                                   "columns": ["id"]})
    assert status == 200 and [r["id"] for r in found["results"]] == table.search(
        text="fast arrow parser", k=10)["id"].to_pylist()
    status, found = server.http("POST", f"/tables/{name}/search", {"vector": q.tolist(), "text": "fast arrow parser",
                                                                   "k": 5, "exact": True, "columns": ["id"]})
    assert status == 200 and [r["id"] for r in found["results"]] == hybrid["id"].to_pylist()
    assert set(found["results"][0]) == {"id", "_relevance_score", "_distance", "_score"}
    other = unique("text")
    db.create_table(other, data={"id": np.arange(3), "summary": ["a b", "cc dd", "ee"], "vector": vectors(3)})
    assert server.http("POST", f"/tables/{other}/text_index", {"columns": ["summary"]}) == (200, {"created": True})
    assert server.http("POST", f"/tables/{other}/text_index", {"columns": ["nope"]})[0] == 400
    db.close()


def test_a_table_embedding_its_text_over_flight_and_http(server) -> None:
    from omendb.embedding import HashEmbedding

    texts = ["fast arrow parser", "json schema validator", "async http client", "arrow flight server"]
    db = server.connect()
    name = unique("embed")
    table = db.create_table(name, data={"id": np.arange(4), "summary": texts}, embedding=HashEmbedding(16),
                            source_column="summary")
    assert table.embedding == {"name": "hash", "params": {"dim": 16}, "source_column": "summary"}
    table.add({"id": [4], "summary": ["postgres driver"]})  # (embedded by the server)
    want = HashEmbedding(16)(texts + ["postgres driver"])
    np.testing.assert_array_equal(np.stack(table.get([0, 4])["vector"].to_numpy(zero_copy_only=False)), want[[0, 4]])
    assert table.search("arrow flight", k=1)["id"].to_pylist() == [3]
    assert table.search(["postgres driver", "json validator"], k=1)["id"].to_pylist() == [4, 1]
    status, found = server.http("POST", f"/tables/{name}/search", {"query": "arrow flight", "k": 2, "columns": ["id"]})
    assert status == 200 and [r["id"] for r in found["results"]] == table.search("arrow flight", k=2)["id"].to_pylist()
    status, found = server.http("POST", f"/tables/{name}/search", {"queries": ["json validator"], "k": 1})
    assert status == 200 and found["results"][0]["id"] == 1
    assert server.http("POST", f"/tables/{name}/search", {"query": "x", "vector": [0.0] * 16})[0] == 400
    with pytest.raises(omendb.ArgumentTypeError, match="adapters"):
        db.create_table(unique("embed"), data={"id": [0], "summary": ["a"]}, embedding=lambda texts: [[0.0]],
                        source_column="summary")
    wide = db.create_table(unique("wide"), embedding=HashEmbedding(65_536), source_column="summary")
    with pytest.raises(omendb.InvalidArgumentError, match="MiB in one request"):  # (a few KB of text, GBs of vectors)
        wide.add({"id": np.arange(2_000), "summary": ["a"] * 2_000})
    with pytest.raises(omendb.InvalidArgumentError, match="MiB in one request"):
        wide.search(["a"] * 2_000, k=1)
    assert wide.count() == 0
    status, found = server.http("POST", f"/tables/{wide.name}/add", {"rows": [{"summary": "a"}] * 2_000})
    assert status == 400 and "MiB in one request" in str(found)
    plain = unique("plain")
    db.create_table(plain, data={"id": np.arange(3), "vector": vectors(3)})
    with pytest.raises(omendb.InvalidVectorError, match="no embedding function"):
        db.open_table(plain).search("words")
    db.close()
