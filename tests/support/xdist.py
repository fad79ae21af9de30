"""Groups of tests that share one pytest-xdist worker (``--dist loadgroup``, see pyproject.toml)."""

import pytest

# The heaviest tests that judge time (random kill moments, lease takeovers, failover windows, call
# bounds while a server is down) run one at a time, never beside each other, on one worker; lighter
# tests run on the others meanwhile. A module whose tests share a module-scoped cluster stays whole.
TIMING = pytest.mark.xdist_group("timing")
