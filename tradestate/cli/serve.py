"""``tradestate serve``: the read models over HTTP."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import ConfigOption, DbOption, command, exit_codes, fail, settings


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("the server failed", extra="the database cannot be reached, or the server "
                                                            "could not start (e.g. the port is in use)"))
    @command
    def serve(
        db: DbOption = None,
        host: Annotated[Optional[str], typer.Option(help="Address to bind; other than loopback needs a token "
                                                         "(default: $TRADESTATE_API_HOST, the config file's [api] "
                                                         "host, else 127.0.0.1).")] = None,
        port: Annotated[Optional[int], typer.Option(help="Port to listen on (default: $TRADESTATE_API_PORT, the "
                                                         "config file's [api] port, else 8321).")] = None,
        token: Annotated[Optional[str], typer.Option(help="Bearer token required on every request. Prefer "
                                                          "$TRADESTATE_API_TOKEN or the config file's [api] token: "
                                                          "a flag is visible to other users in ps.",
                                                     show_default=False)] = None,
        allowed_host: Annotated[Optional[list[str]], typer.Option(
            "--allowed-host", help="Also answer requests with this Host (name, or name:port); repeat for several "
                                   "(default: $TRADESTATE_API_ALLOWED_HOSTS, comma-separated, or the config file). "
                                   "Loopback names and the address listened on are always answered; any other "
                                   "Host gets 421 (DNS rebinding).", show_default=False)] = None,
        open_reads: Annotated[Optional[bool], typer.Option(
            "--open-reads/--no-open-reads", help="Reads need no token even with tokens configured (loopback only; "
                                                 "the /control endpoints always need one).", show_default=False)] = None,
        json: Annotated[bool, typer.Option("--json", help="Errors as a JSON object on stderr (the server logs "
                                                          "as usual).")] = False,
        alerts: Annotated[bool, typer.Option("--alerts/--no-alerts", help="Also deliver alerts to the webhooks of "
                                                                          "$TRADESTATE_ALERT_URL / the config file's alert.url (off by "
                                                                          "default: `project` delivers them).")] = False,
        drill_max_age_days: Annotated[float, typer.Option(
            "--drill-max-age-days", min=0.001, help="/health is degraded when the last restore drill (tradestate "
                                                    "drill) failed or is older than this.")] = 35.0,
        require_drill: Annotated[bool, typer.Option(
            "--require-drill", help="/health is degraded also when no restore drill was ever recorded.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Serve the read models to risk tools over HTTP (OpenAPI at /docs), with /health and /metrics, and
        the operator controls (POST /control/..., always with a token: $TRADESTATE_API_TOKEN is operator "api",
        $TRADESTATE_API_TOKENS="alice:tok1,bob:tok2" or $TRADESTATE_API_TOKENS_FILE name the operators), and the
        operator console for a browser at /console (sign in with a token)."""
        from ..projections.http.auth import HostPolicy, load_tokens
        from ..projections.http.server import run_server

        s = settings(config, db=db, api_host=host, api_port=port, api_token=token, api_allowed_hosts=allowed_host,
                     api_open_reads=open_reads)
        secret = s.api_token.get_secret_value() if s.api_token is not None else None
        if port is not None and not 0 <= port <= 65535:
            fail(f"port {port} is not a TCP port (0-65535)")
        named = load_tokens(None, s.api_tokens.get_secret_value() if s.api_tokens is not None else None,
                            s.api_tokens_file)
        HostPolicy.of(s.api_allowed_hosts)  # a malformed --allowed-host: exit 2 before anything is opened
        from ..alerts import service_options

        alert_options = service_options(s) if alerts else None
        if alerts and not alert_options["urls"]:
            fail("--alerts needs a webhook: $TRADESTATE_ALERT_URL or url in the config file's alert table")
        raise typer.Exit(run_server(s.db, host=s.api_host, port=s.api_port, token=secret, tokens=named,
                                    open_reads=s.api_open_reads, allowed_hosts=s.api_allowed_hosts,
                                    alerts=alert_options, drill_max_age_days=drill_max_age_days,
                                    drill_required=require_drill))
