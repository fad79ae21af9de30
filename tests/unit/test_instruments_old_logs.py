"""Logs written before open-order adjustments, futures settlements and settlement currencies
fold to the same bytes: their corporate actions were recorded alone (no ``OrderAdjusted``), no
``VariationMarginSettled`` is in them, and every instrument's settlement currency is its quote
currency."""

from __future__ import annotations

import hashlib

import pytest

from tests.unit.test_instruments_venue_facts import mixed_log

# sha256 of repr(summary) of ``mixed_log(seed)`` (instruments, FX rates, cash at two venues, fills
# with fees pending, corrections and busts, fees in cash and in kind, splits), taken with the code
# before this change (main at 27a2421).
BEFORE = [
    "e43f592fc685ea88b8235bdfd7f227349cf42a542905359140fa6f44d228e6f3",
    "bbadd46b9bc0bc2a890b056a653f4fc3c8c964836d758dae16d6a4ceba8be561",
    "37e776a8c13a0d2c38d71a81a0512731fb1e738c8520c608eaff7e8ee2a01218",
    "5d7f58c64ad8ab12617d0f03881eca81afe093c29c07f7175debb62cf3baf720",
    "5a67f72cb179bbb98db872fe45b1927674f24e1949e2041e8ec454b5aff0466e",
    "7a88f34a08f6c75eb8754af54f13630c0169ed483edefbcefc2818b77a23f8ec",
    "afbfd415ded914798322a9538c80696c8360ae44b1a5948e2af22edd428ddf57",
    "72b6ac10af8d7966471ff623ff972c09be139151cb9c47e011fd30317ed3cb8c",
    "1828e1a7a42955e4ab1de42302444941f28175df3b54e26f333fe5f05d571ad0",
    "2d03e1cfce313cac83b5bd74eec3f416614dc6580a817badc9ed0dfef4dc0931",
    "e1f70938a7521aacd42c2f09703b1cc706ba8280c84a9128ddbf0709d10cf92f",
    "8d1a44a8ec3e0655fe9acea56d59e3c4e5ef6bb97997a822cfc76ff3b28b772e",
]


@pytest.mark.parametrize("seed", range(len(BEFORE)))
def test_a_log_of_instruments_from_before_folds_to_the_same_bytes(seed):
    summary = mixed_log(seed).state.summary()
    assert hashlib.sha256(repr(summary).encode()).hexdigest() == BEFORE[seed]
