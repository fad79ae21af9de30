"""Several processes, crashes, chaos, the command line and the installed package."""
