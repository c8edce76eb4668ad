"""``omendb serve``: one process holding a database, serving Arrow Flight and HTTP JSON.

The server opens the database as its single writer (index builder and compaction
service running), serves Flight on ``--port`` and HTTP on ``--http-port``, and on
SIGTERM/SIGINT stops accepting calls, flushes every table and exits.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Callable

__all__ = ["serve"]


def serve(path: str | Path, *, host: str = "127.0.0.1", port: int = 6334, http_port: int | None = 6335,
          token: str | None = None, max_request_bytes: int = 16 << 20, public_docs: bool = False,
          unsafe_filters: bool = False,
          announce: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
    """Serve the database at ``path`` until SIGTERM/SIGINT (blocking).

    ``public_docs``: serve the HTTP API's description (``/docs``, ``/openapi.json``)
    without the token. ``unsafe_filters``: accept any SQL in clients' ``where``
    (default: only functions whose cost is bounded by the rows they read).
    """
    import uvicorn

    from ..database import open_database
    from ..table import TableOptions
    from .flight import OmenFlightServer
    from .http import create_app

    # Requests run in parallel on the server's threads: one BLAS thread each, or the
    # threads of concurrent searches fight over the cores (measured in bench_server).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    db = open_database(path, TableOptions())  # (a folder, or s3://... with AWS_* settings from the environment)
    flight_server = OmenFlightServer(db, f"grpc://{host}:{port}", token=token,
                                     max_message_bytes=max(max_request_bytes * 4, 256 << 20),
                                     unsafe_filters=unsafe_filters)
    http_server = None
    threads = [threading.Thread(target=flight_server.serve, name="omendb-flight", daemon=True)]
    if http_port is not None:
        config = uvicorn.Config(create_app(db, token=token, max_request_bytes=max_request_bytes, public_docs=public_docs,
                                       unsafe_filters=unsafe_filters),
                                host=host, port=http_port, log_level="warning", lifespan="off")
        http_server = uvicorn.Server(config)
        http_server.install_signal_handlers = lambda: None  # the main thread handles signals
        threads.append(threading.Thread(target=http_server.run, name="omendb-http", daemon=True))
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for thread in threads:
        thread.start()
    if http_server is not None:
        while not http_server.started and threads[1].is_alive():
            stop.wait(0.05)
    urls = [f"grpc://{host}:{flight_server.port}"] + ([f"http://{host}:{http_port}"] if http_port else [])
    announce(f"omendb serving {db.uri or Path(path).resolve()} on {' and '.join(urls)}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        if http_server is not None:
            http_server.should_exit = True
        flight_server.shutdown()
        db.close()  # flushes every table
        announce("omendb server stopped; all tables flushed")
        sys.stdout.flush()
