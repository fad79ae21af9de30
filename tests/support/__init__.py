"""Code the tests import: venue fakes, venue controls, multi-process workers, shared builders."""
