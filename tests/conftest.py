"""Shared fixtures: database paths, a seeded RNG, clustered vectors with metadata,
and a brute-force NumPy nearest-neighbour reference."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pytest

import omendb

LANGS = ("en", "de", "fr", "ja")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path of a database folder that does not exist yet."""
    return tmp_path / "vectors.omen"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


@dataclass
class Dataset:
    """Rows made by :func:`make_clustered`: ids, float32 vectors and metadata."""

    ids: np.ndarray        # int64
    vectors: np.ndarray    # (n, dim) float32
    lang: list[str]
    score: np.ndarray      # float64
    cluster: np.ndarray    # int64

    def __len__(self) -> int:
        return len(self.ids)

    def arrow(self, *, with_ids: bool = True) -> pa.Table:
        dim = self.vectors.shape[1]
        columns = {}
        if with_ids:
            columns["id"] = pa.array(self.ids, pa.int64())
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(self.vectors.reshape(-1)), dim)
        columns["lang"] = pa.array(self.lang, pa.string())
        columns["score"] = pa.array(self.score, pa.float64())
        columns["cluster"] = pa.array(self.cluster, pa.int64())
        return pa.table(columns)

    def rows(self) -> list[dict]:
        return [
            {"id": int(i), "vector": v.tolist(), "lang": lang, "score": float(s), "cluster": int(c)}
            for i, v, lang, s, c in zip(self.ids, self.vectors, self.lang, self.score, self.cluster)
        ]

    def slice(self, start: int, stop: int) -> "Dataset":
        return Dataset(self.ids[start:stop], self.vectors[start:stop], self.lang[start:stop],
                       self.score[start:stop], self.cluster[start:stop])


def make_clustered(rng: np.random.Generator, n: int, dim: int = 16, *, clusters: int = 5,
                   first_id: int = 0, spread: float = 0.3) -> Dataset:
    """``n`` vectors around ``clusters`` random centres, with lang/score/cluster metadata."""
    centres = rng.normal(size=(clusters, dim)) * 3.0
    cluster = rng.integers(0, clusters, size=n)
    vectors = (centres[cluster] + rng.normal(scale=spread, size=(n, dim))).astype(np.float32)
    lang = [LANGS[i] for i in rng.integers(0, len(LANGS), size=n)]
    score = rng.random(n)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    return Dataset(ids, vectors, lang, score, cluster.astype(np.int64))


@pytest.fixture
def clustered(rng: np.random.Generator) -> Callable[..., Dataset]:
    """``clustered(n, dim=16, clusters=5, first_id=0)`` -> :class:`Dataset`."""

    def make(n: int, dim: int = 16, **kwargs) -> Dataset:
        return make_clustered(rng, n, dim, **kwargs)

    return make


def brute_force_distances(vectors: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """(Q, N) float64 distances computed directly from the definitions."""
    x = np.asarray(vectors, dtype=np.float64)
    q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    dots = q @ x.T
    if metric == "dot":
        return -dots
    if metric == "cosine":
        xn = np.linalg.norm(x, axis=1)
        qn = np.linalg.norm(q, axis=1)
        return 1.0 - dots / (np.maximum(qn, 1e-30)[:, None] * np.maximum(xn, 1e-30)[None, :])
    raise ValueError(metric)


@pytest.fixture(scope="session")
def brute_force() -> Callable[[np.ndarray, np.ndarray, str], np.ndarray]:
    """``brute_force(vectors, queries, metric)`` -> (Q, N) float64 distances."""
    return brute_force_distances


def run_python(code: str, *args, timeout: float = 60):
    """Run ``code`` in a fresh interpreter that imports the same omendb as the tests.

    A table holds a per-process writer lock, so "a process that wrote and died without
    close()" can only be simulated in another process.
    """
    import os
    import subprocess
    import sys
    import textwrap

    import omendb

    env = dict(os.environ)
    package_root = str(Path(omendb.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(params=["arrow", "lance"])
def segment_format(request, monkeypatch):
    """Run a test module over both segment formats: tables it creates default to each in turn.

    Use with ``pytestmark = pytest.mark.usefixtures("segment_format")``. Tables made in
    subprocesses keep the default (Arrow IPC).
    """
    original = omendb.Database.create_table

    def create_table(self, name, data=None, **kwargs):
        kwargs.setdefault("format", request.param)
        return original(self, name, data, **kwargs)

    monkeypatch.setattr(omendb.Database, "create_table", create_table)
    return request.param


# ------------------------------------------------------------------ server mode
TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`omendb serve` in a subprocess; started and stopped by the tests."""

    def __init__(self, path: Path, token: str | None = TOKEN, *extra: str) -> None:
        self.path, self.token, self.extra = path, token, list(extra)
        self.port, self.http_port = free_port(), free_port()
        self.start()

    def start(self) -> None:
        args = [sys.executable, "-m", "omendb.server", str(self.path), "--host", "127.0.0.1",
                "--port", str(self.port), "--http-port", str(self.http_port)]
        if self.token:
            args += ["--token", self.token]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert "omendb serving" in line, line + self.proc.stderr.read()

    @property
    def uri(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def connect(self, token: str | None = TOKEN, **kwargs) -> omendb.remote.RemoteDatabase:
        return omendb.connect(self.uri, token=token, **kwargs)

    def http(self, method: str, path: str, body: dict | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"content-type": "application/json",
                                                  **({"authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def http_raw(self, method: str, path: str, token: str | None = TOKEN) -> int:
        """The status of a request whose answer may not be JSON (the API's docs page)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method,
                                         headers={"authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self, sig: int = signal.SIGTERM) -> str:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=60)
        return out




# -------------------------------------------- one server shared by the server-mode tests
SERVED_DIM = 8


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One ``omendb serve`` (with ``TOKEN``) for every test that only uses it."""
    srv = Server(tmp_path_factory.mktemp("served") / "db")
    yield srv
    srv.stop()


def served_vectors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random float32 vectors of ``SERVED_DIM`` components."""
    return np.random.default_rng(seed).standard_normal((n, SERVED_DIM)).astype(np.float32)


def unique(prefix: str) -> str:
    """A table name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sql_udf_calls(monkeypatch) -> list[int]:
    """Query rows per call of omendb's SQL UDFs, as they happen (they come in batches)."""
    from omendb.duck.session import SqlSession

    calls: list[int] = []
    original = SqlSession._rows

    def counting(self, udf, columns, layout):
        calls.append(len(columns[0]))
        return original(self, udf, columns, layout)

    monkeypatch.setattr(SqlSession, "_rows", counting)
    return calls


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The documentation site, built with ``mkdocs build --strict`` once per session.

    ``OMENDB_SITE_DIR`` names a site ``.ci/run`` has just built strictly from this checkout,
    so CI does not build it twice.
    """
    import os

    pytest.importorskip("mkdocs", reason="the site needs the docs tools: pip install -e '.[test]'")
    given = os.environ.get("OMENDB_SITE_DIR")
    if given and (Path(given) / "index.html").exists():
        return Path(given)
    site = tmp_path_factory.mktemp("site")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=root,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-5000:]}"
    return site


class S3Server:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, in a subprocess."""

    def __init__(self) -> None:
        import tempfile
        import time

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # (its request log goes to a file: a pipe nobody reads would fill and stop the server)
        self.log = tempfile.NamedTemporaryFile("w+", prefix="moto-", suffix=".log")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return
            except (urllib.error.URLError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    self.log.seek(0)
                    raise RuntimeError(f"the S3 server did not start: {self.log.read()[-2000:]}") from None
                time.sleep(0.1)

    @property
    def options(self) -> dict:
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing", "region": "us-east-1"}

    def client(self):
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1",
                            config=botocore.config.Config(connect_timeout=5, read_timeout=30,
                                                          retries={"max_attempts": 3}))

    def new_bucket(self) -> str:
        name = f"omendb-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    """One S3 server for the session; tests skip (saying why) only where it cannot start."""
    pytest.importorskip("boto3", reason="s3:// databases need boto3: pip install -e '.[test]'")
    pytest.importorskip("moto.server", reason="the S3 server is moto's server mode: pip install -e '.[test]'")
    try:
        server = S3Server()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@dataclass
class S3Database:
    """A fresh bucket on the test S3 server: the URI of a database in it, and how to open it."""

    server: S3Server
    bucket: str
    uri: str
    tmp: Path

    def open(self, cache: str = "cache", **kwargs) -> omendb.Database:
        """Open the database with its own local cache folder (``cache`` names it: two
        names are two machines)."""
        return omendb.open(self.uri, storage_options=self.server.options, cache_dir=self.tmp / cache, **kwargs)

    def keys(self, prefix: str = "") -> list[str]:
        client = self.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))


@pytest.fixture
def s3_db(s3_server: S3Server, tmp_path: Path) -> S3Database:
    bucket = s3_server.new_bucket()
    return S3Database(s3_server, bucket, f"s3://{bucket}/db", tmp_path)
