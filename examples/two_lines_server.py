"""The two-line API against a server, sync and async: starts `omendb serve` on a free
loopback port, connects, adds and searches, then stops the server.

    python examples/two_lines_server.py
"""

import asyncio
import socket
import subprocess
import sys
import tempfile

import numpy as np

import omendb


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


vectors = np.random.default_rng(1).standard_normal((500, 32)).astype(np.float32)

with tempfile.TemporaryDirectory() as folder:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "omendb.server", f"{folder}/served.db",
                               "--port", str(port), "--http-port", "0"], stdout=subprocess.PIPE, text=True)
    print(server.stdout.readline().strip())       # "omendb serving ... on grpc://127.0.0.1:PORT"
    try:
        db = omendb.connect(f"localhost:{port}")  # scheme optional: grpc:// assumed
        ids = db.add_batch(vectors)
        hits = db.search(vectors[7], k=3)
        print(f"sync: added {len(ids)}, nearest to vector 7: {hits['id'].to_pylist()}")

        async def main() -> None:
            adb = await omendb.connect_async(f"localhost:{port}")
            new_ids = await adb.add_batch(vectors[:10] + 1.0)   # awaitable, as in the README
            found = await adb.search(vectors[0] + 1.0, k=1)
            print(f"async: added {len(new_ids)}, nearest: {found['id'].to_pylist()}, count {await adb.count()}")
            await adb.close()

        asyncio.run(main())
        db.close()
    finally:
        server.terminate()
        print(server.communicate(timeout=60)[0].strip())
