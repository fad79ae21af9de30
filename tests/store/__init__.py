"""The event logs and what is built on their SQL seam, on SQLite and PostgreSQL."""
