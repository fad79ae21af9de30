"""The HTTP API for risk tools: the read-model tables over JSON, with probes and /metrics.

``app.create_app`` builds the application, ``server.run_server`` / ``server.background_server``
serve it; ``routes`` holds the endpoints, ``schemas`` the bodies, ``auth`` the bearer token. The
SQL lives below, in ``projections/queries.py`` (which the Python ``ReadModel`` shares without
importing the web framework).
"""

from .app import create_app
from .server import background_server, is_loopback, run_server

__all__ = ["background_server", "create_app", "is_loopback", "run_server"]
