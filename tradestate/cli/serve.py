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
        json: Annotated[bool, typer.Option("--json", help="Errors as a JSON object on stderr (the server logs "
                                                          "as usual).")] = False,
        alerts: Annotated[bool, typer.Option("--alerts/--no-alerts", help="Also deliver alerts to the webhooks of "
                                                                          "$TRADESTATE_ALERT_URL / the config file's alert.url (off by "
                                                                          "default: `project` delivers them).")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Serve the read models to risk tools over HTTP (OpenAPI at /docs), with /health and /metrics."""
        from ..projections.http.server import run_server

        s = settings(config, db=db, api_host=host, api_port=port, api_token=token)
        secret = s.api_token.get_secret_value() if s.api_token is not None else None
        if port is not None and not 0 <= port <= 65535:
            fail(f"port {port} is not a TCP port (0-65535)")
        from ..alerts import service_options

        alert_options = service_options(s) if alerts else None
        if alerts and not alert_options["urls"]:
            fail("--alerts needs a webhook: $TRADESTATE_ALERT_URL or url in the config file's alert table")
        raise typer.Exit(run_server(s.db, host=s.api_host, port=s.api_port, token=secret, alerts=alert_options))
