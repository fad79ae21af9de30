"""Properties of instruments, multipliers and currencies over generated logs (pure domain)."""

from __future__ import annotations

import pytest

from tests.support.instrument_logs import legacy_log, summary_digest

# sha256 of the summary of ``legacy_log(seed)``, taken with the code before instruments existed
# (commit f0b7bc1): a log without instrument events must fold to the same bytes for ever.
LEGACY_DIGESTS = [
    "09aca2643f75165529a3f7109926ff073140a55e84b8f8686d6b90ba80768e60",
    "7aabf99a78ed72e56ae6361f58102c9f2fbde8079681766f44f8c9cadb57ebf7",
    "f765d357d4dc9cda57456fca770c4557150e8459807cb177469e50630549e765",
    "bcada6775a3763a630000d074154fb69509ca0d25cc5a6d9714b135a1b98c968",
    "0ca236ecb3d4e89839b3abc08b31f272d89dae722d6f5d478504729f5724dd3f",
    "62a5873639b187e9395e9aa470c7dc3ee5f930f8ab5464f2d1e60e438bfb155d",
    "87e5605517accdaeded34ffd5e67ca1020238c78f6a4e6cf5cfe100f297d1824",
    "1919134bcc9ae07c62d8c3d48d173ed65a0a13523c77d5a9580f51c51c05bc88",
    "9b5b8a71784dd43e85bfe951f545e1556f9f837732bdac725e4988e467b64570",
    "ebb77f4d675e6a9fcafc0d543be634a2532c48fa9c9ec29c6dbee5d7f3536cfe",
    "46e5412cf600eaab7ae1db729e86f18c03abd5a5658dea8be53b05644727589d",
    "2dc79e51aa11a4eab4e2d03a6c2de2908cb35a80382ec2a3ba7b74af297f8ed1",
]


@pytest.mark.parametrize("seed", range(len(LEGACY_DIGESTS)))
def test_a_log_without_instruments_folds_to_the_same_bytes_as_before_instruments(seed):
    assert summary_digest(legacy_log(seed).state) == LEGACY_DIGESTS[seed]
