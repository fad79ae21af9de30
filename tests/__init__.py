"""The test suite, one package per layer; ``tests.support`` holds what the tests import."""
