"""The ``omendb`` command line."""

from __future__ import annotations

import sys

import click

import omendb

from .errors import OmenError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(omendb.__version__, prog_name="omendb")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """omendb: an Arrow-native, embedded-first vector store."""
    ctx.obj = {"debug": debug}


@main.command()
@click.option("--path", default="omendb-demo.omen", show_default=True, help="Database folder to create/reuse.")
@click.option("--rows", default=50_000, show_default=True, help="Rows to generate and ingest.")
@click.option("--dim", default=128, show_default=True, help="Vector dimension.")
@click.option("--queries", default=200, show_default=True, help="Queries to time.")
@click.pass_context
def demo(ctx: click.Context, path: str, rows: int, dim: int, queries: int) -> None:
    """Make clustered vectors, ingest them durably, index them, run exact, HNSW and filtered searches."""
    from .demo import run_demo

    try:
        run_demo(path, rows=rows, dim=dim, queries=queries)
    except (OmenError, OSError, ValueError) as exc:
        if ctx.obj["debug"]:
            raise
        click.echo(f"omendb demo: error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
