"""The broker adapters against the simulated venue and wire-level fakes."""
