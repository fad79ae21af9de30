"""``tradestate serve``: the read models over HTTP."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from ..domain.errors import TradestateError
from .common import DbOption
from .common import fail as _fail


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        db: DbOption = None,
        host: Annotated[str, typer.Option(help="Address to bind (other than loopback needs --token).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8321,
        token: Annotated[Optional[str], typer.Option(help="Bearer token required on every request (default: $TRADESTATE_API_TOKEN).")] = None,
    ) -> None:
        """Serve the read models to risk tools over HTTP (OpenAPI at /docs), with /health and /metrics."""
        from ..projections.http.server import run_server

        try:
            raise typer.Exit(run_server(db, host=host, port=port, token=token or os.environ.get("TRADESTATE_API_TOKEN")))
        except TradestateError as e:
            _fail(str(e))
