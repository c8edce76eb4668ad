"""How the ``omendb`` commands fail: one line on standard error, ``omendb <command>: error: ...``,
exit status 1 for data and database errors and 2 for usage errors (``--debug``: the traceback)."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence

import click

from ..errors import OmenError

__all__ = ["CommandError", "OmenGroup", "handle_errors"]


class CommandError(click.ClickException):
    """A data or database error: one line on stderr, exit status 1."""

    exit_code = 1


class OmenGroup(click.Group):
    """A click group whose errors are one line each (usage errors too), without tracebacks."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name or "omendb", complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else \
                getattr(exc, "command_path", "omendb")
            hint = f" (see '{where} --help')" if isinstance(exc, click.UsageError) else ""
            click.echo(f"{where}: error: {_one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("omendb: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # e.g. `omendb search ... | head`: the reader left, nothing to report
            sys.stderr.close()
            sys.exit(0)
        sys.exit(result if isinstance(result, int) else 0)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError)) \
            and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, (OmenError, OSError, ValueError, KeyError, ImportError, TypeError)):
        return _one_line(str(exc))
    return f"{type(exc).__name__}: {_one_line(str(exc))} (run 'omendb --debug ...' for the traceback)"


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn exceptions of ``command`` into one clear line and exit status 1 (``--debug``: re-raise)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            if (ctx.find_root().obj or {}).get("debug"):
                raise
            error = CommandError(_describe(exc))
            error.command_path = ctx.command_path  # type: ignore[attr-defined]
            raise error from None

    return wrapper
