"""The projector, the read models and the HTTP API."""
