"""The client, the write loop, recovery, the reconciliation runner and settings."""
