"""The ``omendb`` command line: ingest, search, info, compact, export, demo, serve.

Every command has ``--help``. Errors print one line, ``omendb <command>: error: ...``,
on standard error and exit with status 1 (data and database errors) or 2 (usage
errors); ``omendb --debug <command> ...`` shows the traceback instead. Commands that
report a summary print it for people on a terminal and as one JSON line when standard
output is a pipe or a file (or with ``--json``), so scripts can parse it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

import omendb

from ..errors import TableNotFoundError
from ..storage.objectstore import is_store_uri
from ..table.export import EXPORT_FORMATS
from ..io.sources import FILE_FORMATS
from .errors import OmenGroup, handle_errors
from .output import (RESULT_FORMATS, console, environment, json_default, load_queries, parse_columns,
                     result_format_of, size_text, table_info, write_results)

__all__ = ["main"]


def _machine_output(as_json: bool) -> bool:
    """Summaries as one JSON line (pipes, files, ``--json``) rather than for a person."""
    return as_json or not sys.stdout.isatty()


def _emit_json(record: dict[str, Any]) -> None:
    click.echo(json.dumps(record, default=json_default, separators=(",", ":")))


# ------------------------------------------------------------------ the group
@click.group(cls=OmenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(omendb.__version__, prog_name="omendb")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """omendb: an Arrow-native, embedded-first vector store.

    \b
    omendb ingest data.parquet --db ./vectors.omen --table docs
    omendb search --db ./vectors.omen --table docs --query q.npy -k 5
    omendb info --db ./vectors.omen
    omendb export --db ./vectors.omen --table docs -o docs.parquet
    """
    ctx.obj = {"debug": debug}


def _location(db_path: str) -> str | Path:
    """A database folder, or an ``s3://`` URI as given (its endpoint and credentials come
    from the usual ``AWS_*`` environment variables, its cache from ``OMENDB_CACHE_DIR``)."""
    return db_path if is_store_uri(db_path) else Path(db_path).expanduser()


def _open_existing(db_path: str, *, read_only: bool, **options: Any) -> omendb.Database:
    path = _location(db_path)
    if isinstance(path, str):
        return omendb.open(path, read_only=read_only, **options)
    if not path.exists():
        raise FileNotFoundError(2, "no such database folder", str(path))
    return omendb.open(path, read_only=read_only, **options)


def _table(db: omendb.Database, name: str | None) -> omendb.Table:
    names = db.table_names()
    if name is None:
        if len(names) == 1:
            return db.open_table(names[0])
        raise click.UsageError(f"--table is required: {db.location} has "
                               + (f"tables {', '.join(names)}" if names else "no tables"))
    if name not in names:
        raise TableNotFoundError(f"table {name!r} does not exist in {db.location} "
                                 f"(tables: {', '.join(names) or 'none'})")
    return db.open_table(name)


# ------------------------------------------------------------------ ingest
def _progress(console: Any, total: int | None) -> Any:
    from rich.progress import (BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rows(ProgressColumn):
        def render(self, task: Any) -> Text:
            done = f"{int(task.completed):,}"
            return Text(f"{done}/{int(task.total):,} rows" if task.total else f"{done} rows")

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")

    columns: list[Any] = [TextColumn("[bold]ingest")]
    columns += [BarColumn()] if total else [SpinnerColumn()]
    columns += [Rows(), Rate(), TimeElapsedColumn()]
    if total:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=False, speed_estimate_period=10)


@main.command()
@click.argument("sources", nargs=-1, required=True, metavar="SRC...")
@click.option("--db", "db_path", required=True, type=click.Path(file_okay=False),
              help="Database folder (created if missing).")
@click.option("--table", "-t", "table_name", required=True, help="Table to create or append to.")
@click.option("--vector-column", default="vector", show_default=True, help="The sources' vector column.")
@click.option("--id-column", default="id", show_default=True,
              help="Primary key column (ids are assigned when the sources lack it).")
@click.option("--batch-size", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Rows per batch; each batch is one atomic, durable commit.")
@click.option("--format", "table_format", type=click.Choice(["arrow", "lance"]), default="arrow",
              show_default=True, help="Segment format of a table created here.")
@click.option("--metric", type=click.Choice(["l2", "cosine", "dot"]), default="l2", show_default=True,
              help="Distance metric of a table created here.")
@click.option("--create", "create_only", is_flag=True, help="The table must not exist yet.")
@click.option("--append", "append_only", is_flag=True, help="The table must exist already.")
@click.option("--upsert", is_flag=True, help="Replace rows whose ids exist (safe re-runs) instead of refusing them.")
@click.option("--source-format", type=click.Choice(FILE_FORMATS), default=None,
              help="Format of the sources when their suffix does not tell ('-' reads an Arrow stream).")
@click.option("--no-fsync", is_flag=True,
              help="Skip the per-batch fsync (faster; survives a crash of omendb, not of the machine).")
@click.option("--index/--no-index", default=True, show_default=True,
              help="Build the HNSW indexes of the new segments (in the background, waited for at the end).")
@click.option("--memtable-mb", default=64, show_default=True, type=click.IntRange(min=1),
              help="Rows buffered before a segment is written; ingest memory is a few times this.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON even on a terminal.")
@handle_errors
def ingest(sources: tuple[str, ...], db_path: str, table_name: str, vector_column: str, id_column: str,
           batch_size: int, table_format: str, metric: str, create_only: bool, append_only: bool, upsert: bool,
           source_format: str | None, no_fsync: bool, index: bool, memtable_mb: int, as_json: bool) -> None:
    """Load SRC... into a table, streaming: Parquet files or folders, Lance datasets and
    LanceDB tables (<db>/<table>.lance), Arrow IPC files or streams, CSV, JSON Lines,
    .npy arrays, or '-' for an Arrow IPC stream on standard input.

    Each batch is one durable, atomic commit: if ingest is interrupted, the table keeps
    every whole batch written before (re-run with --upsert to finish safely). The
    table is created from the first batch's schema unless it exists.
    """
    from ..io.ingest import ingest as ingest_rows
    from ..io.sources import open_source

    if create_only and append_only:
        raise click.UsageError("--create and --append exclude each other")
    mode = "create" if create_only else "append" if append_only else "auto"
    opened = [open_source(src, vector_column=vector_column, batch_size=batch_size, format=source_format)
              for src in sources]
    totals = [s.total_rows for s in opened]
    total = None if any(t is None for t in totals) else sum(totals)  # type: ignore[arg-type]
    machine = _machine_output(as_json)
    done = [0]
    db = omendb.open(_location(db_path), fsync=not no_fsync, memtable_bytes=memtable_mb << 20,
                     build_indexes=index, compaction=False)
    try:
        progress = None if machine else _progress(console(), total)
        task = progress.add_task("ingest", total=total) if progress else None

        def advance(rows: int) -> None:
            done[0] += rows
            if progress is not None:
                progress.advance(task, rows)

        try:
            if progress is not None:
                progress.start()
            result = ingest_rows(db, opened, table=table_name, mode=mode, vector_column=vector_column,
                                 id_column=id_column, metric=metric, format=table_format, batch_size=batch_size,
                                 upsert=upsert, on_batch=advance)
        except KeyboardInterrupt:
            if progress is not None:
                progress.stop()
            db.close()
            click.echo(f"omendb ingest: interrupted after {done[0]:,} rows; they are in table "
                       f"{table_name!r} (whole batches; re-run with --upsert to finish)", err=True)
            sys.exit(130)
        finally:
            if progress is not None:
                progress.stop()
        table = db.open_table(table_name)
        summary = result.as_dict()
        summary["index_seconds"] = 0.0
        table.flush()  # the summary then counts the segments the rows are in
        if index:
            t0 = time.perf_counter()
            if machine:
                table.wait_for_index()
            else:
                with console().status("building HNSW indexes of the new segments..."):
                    table.wait_for_index()
            summary["index_seconds"] = round(time.perf_counter() - t0, 3)
        stats = table.stats()
        summary.update(seconds=round(result.seconds, 3), table_rows=stats["rows"], segments=stats["segments"],
                       indexed_segments=stats["indexed_segments"], dim=stats["dim"], metric=stats["metric"],
                       format=stats["format"], version=stats["version"], db=db.location)
    finally:
        db.close()
    if machine:
        _emit_json(summary)
    else:
        verb = "created" if result.created else "appended to"
        click.echo(f"{verb} table {table_name!r}: {result.rows:,} rows in {result.seconds:.2f} s "
                   f"({result.rows_per_s:,.0f} rows/s, {result.batches} batches); table now has "
                   f"{summary['table_rows']:,} rows, dim {summary['dim']}, {summary['segments']} segment(s), "
                   f"{summary['indexed_segments']} indexed")


# ------------------------------------------------------------------ search
@main.command()
@click.option("--db", "db_path", required=True, type=click.Path(file_okay=False), help="Database folder, or s3://bucket/prefix.")
@click.option("--table", "-t", "table_name", default=None, help="Table to search (default: the only one).")
@click.option("--query", "-q", "query", required=True, metavar="FILE|-|JSON",
              help="Query vectors: .npy, .json (a vector, a list of vectors, or objects with the vector "
                   "column), .jsonl, a .parquet/.arrow/.lance/.csv file with a vector column, '-' for JSON "
                   "on standard input, or an inline JSON array.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Neighbours per query.")
@click.option("--where", default=None, help="SQL predicate over the metadata columns, applied before ranking.")
@click.option("--columns", default=None, help="Comma-separated columns to return (default: all but the "
                                               "vectors; '*' for all). _distance is always added.")
@click.option("--ef", default=None, type=click.IntRange(min=1), help="HNSW candidate list size (recall vs speed).")
@click.option("--exact", is_flag=True, help="Exact scan, bypassing the HNSW indexes.")
@click.option("--output", "-o", "output", default=None, type=click.Path(dir_okay=False),
              help="Write results to FILE, not stdout.")
@click.option("--out", "output_alias", default=None, type=click.Path(dir_okay=False), hidden=True)
@click.option("--format", "-f", "result_format", type=click.Choice(RESULT_FORMATS), default=None,
              help="Result format (default: from the --output suffix, else table; json: one object per line).")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option("--vector-column", default=None, help="Vector column of a query file (default: the table's).")
@handle_errors
def search(db_path: str, table_name: str | None, query: str, k: int, where: str | None, columns: str | None,
           ef: int | None, exact: bool, output: str | None, output_alias: str | None, result_format: str | None,
           as_json: bool, vector_column: str | None) -> None:
    """Find the k nearest rows to each query vector.

    One query gives k rows sorted by _distance (smaller is closer); several give k rows
    per query with a _query column (the query's position). The database is opened
    read-only: it sees what writers have flushed and never waits for them.
    """
    output = _one_output(output, output_alias, required=False)
    if output in RESULT_FORMATS and result_format is None:  # (-o used to take the format)
        click.echo(f"omendb: -o/--output names the file to write; for the result format use --format "
                   f"{output} (taken as the format this time)", err=True)
        output, result_format = None, output
    if as_json:
        if result_format not in (None, "json"):
            raise click.UsageError(f"--json and --format {result_format} disagree: give one of them")
        result_format = "json"
    with _open_existing(db_path, read_only=True) as db:
        table = _table(db, table_name)
        queries = load_queries(query, vector_column or table.vector_column)
        result = table.search(queries, k=k, where=where, columns=parse_columns(columns, table),
                              exact=exact, ef=ef)
        write_results(result, result_format or result_format_of(output), output)


def _one_output(output: str | None, alias: str | None, *, required: bool) -> str | None:
    """The file to write, given as ``-o/--output`` or as the older ``--out``."""
    if output is not None and alias is not None and output != alias:
        raise click.UsageError("give -o/--output or --out (the same option), not both")
    output = output if output is not None else alias
    if required and output is None:
        raise click.UsageError("missing option -o/--output FILE")
    return output


# ------------------------------------------------------------------ info
@main.command()
@click.option("--db", "db_path", default=None, type=click.Path(file_okay=False),
              help="Database folder (omitted: versions of omendb and its libraries).")
@click.option("--table", "-t", "table_name", default=None, help="Show one table in detail.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def info(db_path: str | None, table_name: str | None, as_json: bool) -> None:
    """Tables of a database: rows, dim, metric, format, segments, index state, bytes."""
    if db_path is None:
        if table_name is not None:
            raise click.UsageError("--table needs --db")
        env = environment()
        if as_json:
            _emit_json(env)
        else:
            click.echo("  ".join(f"{k} {v}" for k, v in env.items() if v is not None))
        return
    with _open_existing(db_path, read_only=True) as db:
        if table_name is not None:
            tables = [table_info(_table(db, table_name), detail=True)]
        else:
            tables = [table_info(db.open_table(name), detail=False) for name in db.table_names()]
        if as_json:
            _emit_json({"db": db.location, "tables": tables})
            return
        from rich.table import Table as RichTable

        out = console()
        if table_name is not None:
            t = tables[0]
            out.print(f"[bold]{t['table']}[/] in {db.location}")
            for key in ("rows", "dim", "metric", "format", "id_column", "vector_column", "segments",
                        "indexed_segments", "unindexed_segments", "indexed_rows", "unindexed_rows",
                        "deleted_rows", "version", "versions"):
                out.print(f"  {key:<19} {t[key]:,}" if isinstance(t[key], int) else f"  {key:<19} {t[key]}")
            out.print(f"  {'bytes':<19} {size_text(t['bytes'])}")
            out.print(f"  {'index':<19} {t['index']}")
            out.print("  columns: " + ", ".join(f"{n} {kind}" for n, kind in t["columns"].items()))
            return
        if not tables:
            out.print(f"{db.location}: no tables")
            return
        view = RichTable(title=db.location)
        for name in ("table", "rows", "dim", "metric", "format", "segments", "indexed", "deleted", "size", "version"):
            view.add_column(name, justify="left" if name in ("table", "metric", "format") else "right")
        for t in tables:
            view.add_row(t["table"], f"{t['rows']:,}", str(t["dim"]), t["metric"], t["format"], str(t["segments"]),
                         f"{t['indexed_segments']}/{t['segments']}", f"{t['deleted_rows']:,}", size_text(t["bytes"]),
                         str(t["version"]))
        out.print(view)


# ------------------------------------------------------------------ compact
@main.command()
@click.option("--db", "db_path", required=True, type=click.Path(file_okay=False), help="Database folder, or s3://bucket/prefix.")
@click.option("--table", "-t", "table_name", default=None, help="Compact one table (default: all).")
@click.option("--index/--no-index", default=True, show_default=True,
              help="Also build every missing HNSW index and wait for it.")
@click.option("--cleanup", is_flag=True, help="Then remove old versions and the files only they use.")
@click.option("--keep-last", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --cleanup: versions to keep.")
@click.option("--older-than", default=None, type=click.FloatRange(min=0),
              help="With --cleanup: remove only versions older than this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON even on a terminal.")
@handle_errors
def compact(db_path: str, table_name: str | None, index: bool, cleanup: bool, keep_last: int,
            older_than: float | None, as_json: bool) -> None:
    """Merge small segments, drop deleted rows and build indexes; optionally clean up old versions.

    Needs the tables' writer lock: it fails at once if another process is writing.
    """
    machine = _machine_output(as_json)
    with _open_existing(db_path, read_only=False, build_indexes=index, compaction=False) as db:
        names = [_table(db, table_name).name] if table_name is not None else db.table_names()
        for name in names:
            table = db.open_table(name)
            t0 = time.perf_counter()
            status = None if machine else console().status(f"compacting {name!r}...")
            if status is not None:
                status.start()
            try:
                report: dict[str, Any] = {"table": name, **table.compact()}
                if index:
                    table.wait_for_index()
                if cleanup:
                    report.update(table.cleanup(older_than=older_than, keep_last=keep_last))
            finally:
                if status is not None:
                    status.stop()
            stats = table.stats()
            report.update(rows=stats["rows"], indexed_segments=stats["indexed_segments"], bytes=stats["bytes"],
                          version=stats["version"], seconds=round(time.perf_counter() - t0, 3))
            if machine:
                _emit_json(report)
            else:
                freed = f", removed {report['versions_removed']} version(s) freeing {size_text(report['bytes_freed'])}" \
                    if cleanup else ""
                click.echo(f"{name}: {report['segments_before']} -> {report['segments_after']} segment(s), "
                           f"{report['rows_dropped']:,} deleted rows dropped, {report['indexed_segments']} indexed"
                           f"{freed}, {size_text(report['bytes'])} on disk, version {report['version']} "
                           f"({report['seconds']:.1f} s)")


# ------------------------------------------------------------------ salvage
@main.command()
@click.option("--db", "db_path", required=True, type=click.Path(file_okay=False), help="Database folder, or s3://bucket/prefix.")
@click.option("--table", "-t", "table_name", default=None,
              help="Table to salvage (default: every table whose log is damaged or whose newest version is missing).")
@click.option("--json", "as_json", is_flag=True, help="Print each report as JSON even on a terminal.")
@handle_errors
def salvage(db_path: str, table_name: str | None, as_json: bool) -> None:
    """Reopen tables that refuse to open because their log is damaged or a version is missing.

    Keeps every logged write that still verifies and publishes it as a new version;
    the original log is copied (and unreferenced files moved) to TABLE/salvage/TIME/
    first. Prints what could not be kept. Needs the tables' writer lock.
    """
    if not (Path(db_path) / "omendb.json").is_file():
        raise click.ClickException(f"{db_path}: not an omendb database (no omendb.json)")
    reports = omendb.salvage(db_path, table_name)
    for report in reports:
        if _machine_output(as_json):
            _emit_json(report)
            continue
        if not report["salvaged"]:
            click.echo(f"{report['table']}: not salvaged: {report['error']}")
            continue
        click.echo(f"{report['table']}: kept {report['records_kept']:,} logged write(s) ({report['rows_kept']:,} "
                   f"rows), now version {report['version']}; originals in {report['copies']}")
        for line in report["lost"]:
            click.echo(f"  lost: {line}")
    if not reports and not _machine_output(as_json):
        click.echo("nothing to salvage: every table opens")


# ------------------------------------------------------------------ export
def _export_format(out: str, given: str | None) -> str:
    if given is not None:
        return given
    suffix = Path(out).suffix.lower()
    return {".lance": "lance", ".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow"}.get(suffix, "parquet")


@main.command()
@click.option("--db", "db_path", required=True, type=click.Path(file_okay=False), help="Database folder, or s3://bucket/prefix.")
@click.option("--table", "-t", "table_name", default=None, help="Table to export (default: the only one).")
@click.option("--output", "-o", "output", default=None, type=click.Path(),
              help="File (parquet, arrow) or folder (lance) to write (required).")
@click.option("--out", "output_alias", default=None, type=click.Path(), hidden=True)
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default=None,
              help="Output format (default: from the --output suffix, else parquet).")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON even on a terminal.")
@handle_errors
def export(db_path: str, table_name: str | None, output: str | None, output_alias: str | None,
           export_format: str | None, overwrite: bool, as_json: bool) -> None:
    """Write a table's live rows to Parquet, a Lance dataset (LanceDB reads it) or an Arrow IPC file.

    Streams one consistent snapshot segment by segment; the output appears complete
    or not at all.
    """
    from ..table.export import export_table

    out = _one_output(output, output_alias, required=True)
    with _open_existing(db_path, read_only=True) as db:
        table = _table(db, table_name)
        result = export_table(table, out, _export_format(out, export_format), overwrite=overwrite)
    if _machine_output(as_json):
        _emit_json({"table": table.name, **result.as_dict()})
    else:
        click.echo(f"exported {result.rows:,} rows of {table.name!r} to {result.path} ({result.format}, "
                   f"{size_text(result.bytes)}) in {result.seconds:.2f} s")


# ------------------------------------------------------------------ demo
@main.command()
@click.option("--path", default="omendb-demo.omen", show_default=True, help="Database folder to create/reuse.")
@click.option("--rows", default=50_000, show_default=True, type=click.IntRange(min=1_000),
              help="Rows to generate and ingest.")
@click.option("--dim", default=128, show_default=True, type=click.IntRange(min=2), help="Vector dimension.")
@click.option("--queries", default=200, show_default=True, type=click.IntRange(min=1), help="Queries to time.")
@handle_errors
def demo(path: str, rows: int, dim: int, queries: int) -> None:
    """A tour on data it makes itself: ingest from Parquet, index, search, SQL, compaction."""
    from .demo import run_demo

    run_demo(path, rows=rows, dim=dim, queries=queries)


def _serve() -> click.Command:
    from ..server.command import serve_command

    return serve_command


main.add_command(_serve(), "serve")

if __name__ == "__main__":  # pragma: no cover
    main()
