"""The pure domain: no database, no process, no socket."""
