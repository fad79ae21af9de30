"""The ``tradestate`` command: one Typer app; each command family registers itself from its module."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

try:
    from typer.exceptions import TyperException as _UsageError  # typer vendors click from 0.26 on
except ImportError:  # pragma: no cover - older typer raises click's own exceptions
    from click import ClickException as _UsageError  # type: ignore[assignment]

from . import alerts, bench, chaos, control, demo, engines, integrity, project, reconcile, recovery, replay, serve, state
from . import migrate as migrate_cli
from . import drill as drill_cli
from . import archive as archive_cli
from . import ramp as ramp_cli
from . import shutdown as shutdown_command
from .common import ExitCode, classify, emit_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Event-sourced trading state: a durable log of every intent, fill and risk action.",
    epilog="Exit codes (every command): 0 ok; 1 the command's check found a problem; 2 bad input or usage; "
           "3 the database cannot be reached. Settings: flags, then TRADESTATE_* variables, then the "
           "--config / $TRADESTATE_CONFIG TOML file.",
)


def version() -> str:
    """The installed distribution's version ("unknown" when run from a tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tradestate")
    except PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        print(f"tradestate {version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[Optional[bool], typer.Option("--version", callback=_show_version, is_eager=True,
                                                         help="Print the version and exit.")] = None,
) -> None:
    """Event-sourced trading state: a durable log of every intent, fill and risk action."""


for _module in (demo, state, project, serve, engines, bench, recovery, integrity, reconcile, chaos, replay, control, alerts):
    _module.register(app)
shutdown_command.register(app)
ramp_cli.register(app)
migrate_cli.register(app)
drill_cli.register(app)
archive_cli.register(app)


def main() -> None:
    """Run the command line. Whatever escapes a command as a known error (bad usage, a
    ``TradestateError``, an unreachable database) is one line on stderr (a JSON object when
    ``--json`` was given) and its ``ExitCode``; never a traceback."""
    as_json = "--json" in sys.argv[1:]
    try:
        code = app(standalone_mode=False)
    except _UsageError as e:  # usage errors: unknown option or command, invalid value
        code = int(getattr(e, "exit_code", ExitCode.BAD_INPUT))
        if as_json and type(e).__name__ != "NoArgsIsHelpError":
            emit_error(e.format_message(), code, True)
        else:
            from typer import rich_utils

            rich_utils.rich_format_error(e)  # type: ignore[arg-type]
        sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(ExitCode.PROBLEM)
    except Exception as e:
        known = classify(e)
        if known is None:
            raise
        emit_error(known[1], known[0], as_json)
        sys.exit(known[0])
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
