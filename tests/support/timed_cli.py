"""The command line in a child process that notes when its start-up ended and when it exited, for
tests that bound a command's own time: on a loaded machine the interpreter's start-up (and the
command line's imports) alone can take many seconds, which says nothing about the command.

``timed_cli(args, marks)`` starts ``tradestate.cli``'s ``main()`` as ``python -m tradestate.cli``
does, after importing it first; ``CliMarks(marks)`` then reads the moments it wrote:
``ready`` (imports done, the command about to run) and ``exited`` (``main()`` returned or raised,
``SystemExit`` included), each on the monotonic clock (system-wide on Linux, so comparable with
this process's ``time.monotonic()``) and ``ready_at`` on the wall clock (UTC, comparable with an
event's ``occurred_at``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

_BOOT = r"""
import os, sys, time
from datetime import datetime, timezone

from tradestate.cli.main import main  # the start-up: the interpreter and the command line's imports

marks = os.environ.pop("TRADESTATE_TEST_CLI_MARKS")
with open(marks, "w") as f:
    f.write(f"ready {time.monotonic()!r} {datetime.now(timezone.utc).isoformat()}\n")
sys.argv[0] = "tradestate"
try:
    main()
finally:
    with open(marks, "a") as f:
        f.write(f"exited {time.monotonic()!r}\n")
"""


def timed_cli(args: list[str], marks: Path, **popen: Any) -> subprocess.Popen[str]:
    """``python -m tradestate.cli *args`` as a ``Popen`` (text mode; ``popen`` as for ``Popen``,
    ``env`` included), its moments written to the file ``marks``."""
    env = dict(popen.pop("env", None) or os.environ)
    env["TRADESTATE_TEST_CLI_MARKS"] = str(marks)
    return subprocess.Popen([sys.executable, "-c", _BOOT, *args], text=True, env=env, **popen)


@dataclass(frozen=True)
class CliMarks:
    """The moments one ``timed_cli`` child wrote (``exited`` None while it runs, or if killed)."""

    ready: float
    ready_at: datetime
    exited: float | None

    @classmethod
    def read(cls, marks: Path) -> CliMarks:
        fields = {line.split()[0]: line.split()[1:] for line in marks.read_text().splitlines() if line.strip()}
        ready, ready_at = fields["ready"]
        exited = fields.get("exited")
        return cls(float(ready), datetime.fromisoformat(ready_at), float(exited[0]) if exited else None)

    @property
    def own_seconds(self) -> float:
        """The command's own time: from the end of its start-up to its exit."""
        assert self.exited is not None, "the command has not exited"
        return self.exited - self.ready
