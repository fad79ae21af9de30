"""Fixtures shared by the projection tests."""

from __future__ import annotations

import pytest

import tradestate
from tests.support.projector_worker import Clock, write_session


@pytest.fixture
def session(db_url, store):
    """A log of ~300 events: orders through their whole lifecycle, refusals, risk switches."""
    with tradestate.connect(db_url, clock=Clock()) as client:
        head = write_session(client, 300, seed=11)
    assert head > 250
    return head
