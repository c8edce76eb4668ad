"""The ``omendb serve`` command (also ``python -m omendb.server``)."""

from __future__ import annotations

import sys

import click

from ..errors import OmenError
from ..wire import DEFAULT_HTTP_PORT, DEFAULT_PORT


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (loopback by default; use 0.0.0.0 only behind --token).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="Arrow Flight (gRPC) port.")
@click.option("--http-port", default=DEFAULT_HTTP_PORT, show_default=True, help="HTTP JSON port (0: no HTTP).")
@click.option("--token", default=None, envvar="OMENDB_TOKEN",
              help="Require 'Authorization: Bearer TOKEN' on every call (or set OMENDB_TOKEN).")
@click.option("--max-request-mb", default=16, show_default=True, type=click.IntRange(min=1),
              help="Largest HTTP request body, MiB (JSON decodes to ~20-30x its size in memory; "
                   "bulk writes belong on Flight).")
@click.option("--public-docs", is_flag=True,
              help="Serve the HTTP API description (/docs, /openapi.json) without the token.")
@click.option("--unsafe-filters", is_flag=True,
              help="Accept any SQL in 'where' (default: only functions whose cost is bounded by the rows read).")
def serve_command(path: str, host: str, port: int, http_port: int, token: str | None, max_request_mb: int,
                  public_docs: bool, unsafe_filters: bool) -> None:
    """Serve the database at PATH over Arrow Flight and HTTP until SIGTERM/SIGINT."""
    from . import serve

    try:
        serve(path, host=host, port=port, http_port=http_port or None, token=token,
              max_request_bytes=max_request_mb << 20, public_docs=public_docs, unsafe_filters=unsafe_filters)
    except (OSError, OmenError) as exc:
        click.echo(f"omendb serve: error: {exc}", err=True)
        sys.exit(1)
