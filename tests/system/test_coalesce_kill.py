"""kill -9 during coalesced appends (SQLite and PostgreSQL): every append a caller saw return
(acknowledged) is in the log afterwards at the position it was given; what was in flight either
landed whole or not at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tradestate.adapters.store import open_store

_CHILD = textwrap.dedent("""
    import asyncio, sys, threading, uuid
    from tradestate.adapters.store import new_event, open_store
    from tradestate.adapters.store.coalesce import CommitCoalescer

    url, acks_path = sys.argv[1], sys.argv[2]
    store = open_store(url)
    coalescer = CommitCoalescer(store.trading)
    acks = open(acks_path, "a", buffering=1)
    lock = threading.Lock()

    def ack(stream, appended):
        line = stream + " " + " ".join(str(a.position) for a in appended) + "\\n"
        with lock:
            acks.write(line)  # written to the OS before the next append: a kill -9 cannot lose it

    def caller(i):
        for n in range(10**9):
            stream = f"t{i}-{n}"
            ack(stream, coalescer.append([new_event(stream, v, "Note", b'{}') for v in (1, 2)]))

    for i in range(8):
        threading.Thread(target=caller, args=(i,), daemon=True).start()

    async def flows():
        async def flow(i):
            for n in range(10**9):
                stream = f"a{i}-{n}"
                ack(stream, await coalescer.append_async([new_event(stream, 1, "Note", b'{}')]))
        await asyncio.gather(*[flow(i) for i in range(16)])

    asyncio.run(flows())
""")


def test_every_acknowledged_coalesced_append_survives_kill_9(db_url, tmp_path):
    open_store(db_url).close()
    acks = tmp_path / "acks.txt"
    acks.touch()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, db_url, str(acks)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(acks.read_text().splitlines()) < 300:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the appends never got going"
            time.sleep(0.05)
        time.sleep(0.3)  # kill it in full flight
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    lines = [line.split() for line in acks.read_text().split("\n")[:-1]]  # the last one may be cut short
    assert len(lines) >= 300
    store = open_store(db_url, create=False)
    try:
        for stream, *positions in lines:
            rows = store.trading.read_stream(stream)
            assert [r.position for r in rows] == [int(p) for p in positions], stream
            assert [r.originator_version for r in rows] == list(range(1, len(positions) + 1))
        # Whatever else landed, landed whole: no stream holds part of an append.
        for row in store.trading.iter_rows(0):
            if row[1].startswith("t"):
                assert len(store.trading.read_stream(row[1])) == 2, row[1]
    finally:
        store.close()
