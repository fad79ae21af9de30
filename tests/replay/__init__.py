"""Post-mortem replay: the Python API, the CLI and the report."""
