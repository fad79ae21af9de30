"""Backups on a schedule: tiers, the run that writes each due tier's next link, retention, checks.

A policy file (TOML) names tiers; each has its own directory of backup files::

    key_file = "/etc/tradestate/backup.key"    # or key_env = "VAR"; per tier too; never the key itself
    lock_wait = "1m"                           # how long a run waits for another one on the same tier

    [[tier]]
    name = "tier1"
    every = "15m"        # at most one backup per 15-minute slot (slots aligned on UTC midnight)
    full_every = "1d"    # a new chain (full backup) in each new day; increments between
    keep = "7y"          # whole chains go once their newest link is older than this
    directory = "/backups/tradestate/tier1"

``full_every`` is optional (default: a day, or ``every`` if longer); ``key_file``/``key_env``
given in a tier override the top-level ones, and neither means unencrypted backups.

Durations: an integer and a unit, ``s m h d w y`` (a year counts 366 days, so "7y" never falls
short of seven calendar years, leap days included), or several (``"1h30m"``).

File names are ``<tier>-<YYYYMMDDTHHMMSSZ>-<full|inc>-<sequence>.tsbackup``: they sort by time
within a directory, and a chain is a ``full`` (sequence 0) followed by its ``inc`` links up to the
next ``full``. The planning functions (:func:`plan_tier`, :func:`plan_prune`, :func:`group_chains`)
are pure: links and ``now`` in, decisions out. :func:`run_policy`, :func:`prune_policy` and
:func:`check_policy` do the I/O, each tier under an exclusive ``flock`` on
``<directory>/.tradestate-backup.lock`` with a bounded wait, so two overlapping runs never both
write a tier's next link and a prune never deletes a chain a run is extending.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ...domain.errors import InvalidInput, TradestateError

SUFFIX = ".tsbackup"
LOCK_NAME = ".tradestate-backup.lock"
FULL = "full"
INCREMENTAL = "incremental"
_KIND_IN_NAME = {FULL: "full", INCREMENTAL: "inc"}
_NAME = re.compile(r"^(?P<tier>[A-Za-z0-9_-]+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<kind>full|inc)-(?P<seq>\d{6,})"
                   + re.escape(SUFFIX) + r"$")
_TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 366 * 86400}  # a year never falls short
_DURATION = re.compile(r"(\d+)\s*([smhdwy])")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

TIER_KEYS = ("name", "every", "full_every", "keep", "directory", "key_file", "key_env")
TOP_KEYS = ("tier", "key_file", "key_env", "lock_wait")
DEFAULT_LOCK_WAIT = timedelta(minutes=1)


class PolicyError(InvalidInput):
    """The policy file is unreadable or wrong (the message names the file, line and key)."""


class PolicyBusy(TradestateError):
    """Another run holds a tier's lock for longer than the policy's ``lock_wait``."""


# --------------------------------------------------------------------------------------------
# the policy file


def parse_duration(text: Any) -> timedelta:
    """``"15m"``, ``"1d"``, ``"7y"``, ``"1h30m"`` as a positive ``timedelta``; ``ValueError`` (saying
    what is accepted) otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a duration is a string like \"15m\", not {text!r}")
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact).strip():
        raise ValueError(f"{text!r} is not a duration (an integer and a unit s, m, h, d, w or y: \"15m\", \"7y\")")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(compact))
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest ``parse_duration`` spelling of ``value`` (``timedelta(days=1)`` -> ``"1d"``)."""
    seconds = int(value.total_seconds())
    parts = []
    for unit in ("y", "w", "d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class Tier:
    """One tier: how often (``every``), how often a chain starts over (``full_every``), how long its
    chains are kept (``keep``), where (``directory``) and the key source (never the key)."""

    name: str
    every: timedelta
    full_every: timedelta
    keep: timedelta
    directory: Path
    key_file: Path | None = None
    key_env: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "every": format_duration(self.every), "full_every": format_duration(self.full_every),
                "keep": format_duration(self.keep), "directory": str(self.directory),
                "key_file": str(self.key_file) if self.key_file else None, "key_env": self.key_env}


@dataclass(frozen=True)
class Policy:
    """A loaded policy: its tiers in file order and how long a run waits for a tier's lock."""

    path: Path
    tiers: tuple[Tier, ...]
    lock_wait: timedelta = DEFAULT_LOCK_WAIT


def _key_line(lines: list[str], table: int | None, key: str) -> int | None:
    """The 1-based line of ``key`` at the top level (``table`` None) or in the ``table``-th
    ``[[tier]]`` (0-based), for error messages; None when it cannot be found."""
    current: int | None = None
    seen = -1
    pattern = re.compile(r'^\s*["\']?' + re.escape(key) + r'["\']?\s*=')
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("["):
            if re.match(r"^\[\[\s*tier\s*\]\]", stripped):
                seen += 1
                current = seen
            else:
                current = -1
            if table is not None and current == table and key == "":
                return number
            continue
        if current == table and pattern.match(line):
            return number
    return None


def load_policy(path: str | os.PathLike[str], *, check_directories: bool = True) -> Policy:
    """Read and check the policy file at ``path``. Raises :class:`PolicyError` naming the line
    and key for: a file that is not TOML, an unknown key, a missing or malformed value, a bad
    duration, a tier name used twice, a directory that does not exist (with
    ``check_directories``) or that two tiers share, ``full_every`` shorter than ``every``, a key
    source given twice or the key itself. Relative directories and key files are taken from the
    policy file's directory."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"cannot read the policy file {p}: {e.strerror or e}") from e
    return parse_policy(text, source=str(p), base=p.parent, check_directories=check_directories)


def parse_policy(text: str, *, source: str = "policy", base: Path | None = None,
                 check_directories: bool = True) -> Policy:
    """:func:`load_policy` on the text of a policy file (``source`` names it in messages)."""
    base = base if base is not None else Path.cwd()
    lines = text.splitlines()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: not a valid TOML file: {e}") from e

    def where(table: int | None, key: str) -> str:
        line = _key_line(lines, table, key)
        return f"{source}:{line}" if line else source

    def bad(table: int | None, key: str, message: str) -> PolicyError:
        return PolicyError(f"{where(table, key)}: {message}")

    def duration(table: int | None, label: str, key: str, value: Any) -> timedelta:
        try:
            return parse_duration(value)
        except ValueError as e:
            raise bad(table, key, f"{label}{key}: {e}") from None

    def key_source(table: int | None, label: str, values: dict[str, Any]) -> tuple[Path | None, str | None]:
        for secret in ("key", "key_hex", "key_base64", "password", "passphrase", "secret"):
            if secret in values:
                raise bad(table, secret, f"{label}{secret}: the key itself never goes in the policy; give its "
                          "source: key_file = \"path\" or key_env = \"VARIABLE\"")
        key_file, key_env = values.get("key_file"), values.get("key_env")
        if key_file is not None and key_env is not None:
            raise bad(table, "key_env", f"{label}key_file and key_env are both given: choose one")
        for name, value in (("key_file", key_file), ("key_env", key_env)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise bad(table, name, f"{label}{name} must be a non-empty string, not {value!r}")
        return (base / key_file if key_file else None), key_env

    unknown = sorted(set(data) - set(TOP_KEYS) - {"key", "key_hex", "key_base64", "password", "passphrase", "secret"})
    if unknown:
        raise bad(None, unknown[0], f"unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)}; tiers are "
                  "[[tier]] tables)")
    default_file, default_env = key_source(None, "", data)
    lock_wait = duration(None, "", "lock_wait", data["lock_wait"]) if "lock_wait" in data else DEFAULT_LOCK_WAIT
    tables = data.get("tier")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise bad(None, "tier", "no tiers: add at least one [[tier]] table (name, every, full_every, keep, directory)")

    tiers: list[Tier] = []
    names: dict[str, int] = {}
    directories: dict[Path, str] = {}
    for index, table in enumerate(tables):
        name = table.get("name")
        label = f"tier {name!r}: " if isinstance(name, str) else f"tier #{index + 1}: "
        unknown = sorted(set(table) - set(TIER_KEYS) - {"key", "key_hex", "key_base64", "password", "passphrase",
                                                        "secret"})
        if unknown:
            raise bad(index, unknown[0], f"{label}unknown key {unknown[0]!r} (known: {', '.join(TIER_KEYS)})")
        for required in ("name", "every", "keep", "directory"):
            if required not in table:
                line = _key_line(lines, index, "")
                raise PolicyError(f"{source}:{line}: {label}{required} is missing" if line else
                                  f"{source}: {label}{required} is missing")
        if not isinstance(name, str) or not _TIER_NAME.match(name):
            raise bad(index, "name", f"{label}name must be letters, digits, '-' or '_' (it starts the file "
                      f"names), not {name!r}")
        if name in names:
            raise bad(index, "name", f"tier name {name!r} is used twice (tiers #{names[name] + 1} and #{index + 1})")
        names[name] = index
        every = duration(index, label, "every", table["every"])
        full_every = duration(index, label, "full_every", table["full_every"]) if "full_every" in table \
            else max(every, timedelta(days=1))
        if full_every < every:
            raise bad(index, "full_every", f"{label}full_every ({table['full_every']}) is shorter than every "
                      f"({table['every']}): a chain needs at least one backup")
        keep = duration(index, label, "keep", table["keep"])
        raw_dir = table["directory"]
        if not isinstance(raw_dir, str) or not raw_dir.strip():
            raise bad(index, "directory", f"{label}directory must be a non-empty string, not {raw_dir!r}")
        directory = (base / raw_dir).resolve()
        if check_directories and not directory.is_dir():
            raise bad(index, "directory", f"{label}directory {str(directory)!r} does not exist (create it, or "
                      "mount the backup volume; it is not created for you)")
        if directory in directories:
            raise bad(index, "directory", f"{label}directory {str(directory)!r} is also the directory of "
                      f"tier {directories[directory]!r}: each tier needs its own")
        directories[directory] = name
        key_file, key_env = key_source(index, label, table)
        if key_file is None and key_env is None:
            key_file, key_env = default_file, default_env
        tiers.append(Tier(name, every, full_every, keep, directory, key_file, key_env))
    return Policy(Path(source), tuple(tiers), lock_wait)


# --------------------------------------------------------------------------------------------
# links and chains (pure)


@dataclass(frozen=True, order=True)
class Link:
    """One backup file of a tier, as its name tells: when (``at``, aware UTC), ``kind`` and
    ``sequence`` (0 for a full)."""

    at: datetime
    sequence: int
    kind: str
    tier: str
    name: str
    directory: Path = field(default=Path("."), compare=False)

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "at": self.at.isoformat(), "kind": self.kind,
                "sequence": self.sequence}


def stamp(at: datetime) -> str:
    """``at`` (aware) as the name's UTC stamp ``YYYYMMDDTHHMMSSZ``."""
    if at.tzinfo is None:
        raise InvalidInput(f"a backup time must be timezone-aware, not {at!r}")
    return at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def link_name(tier: str, at: datetime, kind: str, sequence: int) -> str:
    """The file name of a tier's link: ``tier1-20261205T141500Z-inc-000003.tsbackup``."""
    return f"{tier}-{stamp(at)}-{_KIND_IN_NAME[kind]}-{sequence:06d}{SUFFIX}"


def parse_link(name: str, directory: Path = Path(".")) -> Link | None:
    """The :class:`Link` a file name stands for, or None for any other file."""
    m = _NAME.match(name)
    if not m:
        return None
    t = m["stamp"]  # YYYYMMDDTHHMMSSZ; slicing is ~10x faster than strptime (a tier holds ~250k files after 7 years)
    try:
        at = datetime(int(t[0:4]), int(t[4:6]), int(t[6:8]), int(t[9:11]), int(t[11:13]), int(t[13:15]),
                      tzinfo=timezone.utc)
    except ValueError:  # month 13 and the like: not one of ours
        return None
    kind = FULL if m["kind"] == "full" else INCREMENTAL
    return Link(at, int(m["seq"]), kind, m["tier"], name, directory)


@dataclass(frozen=True)
class Chain:
    """A full backup and the increments after it (in order), or increments whose full is gone
    (``links[0]`` is then an increment: an orphan group, never restorable)."""

    links: tuple[Link, ...]

    @property
    def full(self) -> Link | None:
        return self.links[0] if self.links[0].kind == FULL else None

    @property
    def newest(self) -> Link:
        return self.links[-1]

    @property
    def problem(self) -> str | None:
        """Why the names alone show this chain cannot be restored or continued, or None."""
        if self.full is None:
            return f"increment {self.links[0].name} has no full backup before it"
        if self.full.sequence != 0:
            return f"full backup {self.full.name} has sequence {self.full.sequence}, not 0"
        for expected, link in enumerate(self.links):
            if link.sequence != expected:
                return f"link {expected} of the chain of {self.full.name} is missing (next is {link.name})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"full": self.full.name if self.full else None, "links": [link.name for link in self.links],
                "newest": self.newest.at.isoformat(), "problem": self.problem}


def group_chains(links: Iterable[Link]) -> list[Chain]:
    """The links in time order, cut into chains: each full starts one, increments join the chain
    before them (increments before any full form an orphan group)."""
    chains: list[list[Link]] = []
    for link in sorted(links):
        if link.kind == FULL or not chains:
            chains.append([link])
        else:
            chains[-1].append(link)
    return [Chain(tuple(c)) for c in chains]


def _slot(at: datetime, every: timedelta) -> int:
    return int((at - _EPOCH) // every)


@dataclass(frozen=True)
class Step:
    """What a run does for one tier at ``now``: nothing (``due`` False), or write ``name``, a full
    or an increment on ``previous`` with ``sequence``; ``reason`` says why."""

    tier: str
    due: bool
    reason: str
    kind: str | None = None
    name: str | None = None
    sequence: int = 0
    previous: Link | None = None
    problem: bool = False  # not due because something is wrong (the clock), not because it is done

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "due": self.due, "reason": self.reason, "kind": self.kind, "name": self.name,
                "sequence": self.sequence, "previous": self.previous.name if self.previous else None,
                "problem": self.problem}


def plan_tier(tier: Tier, links: Iterable[Link], now: datetime) -> Step:
    """Whether ``tier`` is due at ``now`` and what to write. At most one backup per ``every`` slot
    (slots aligned on the Unix epoch, so on UTC midnight for anything that divides a day): a run
    every few minutes writes one link per slot without drifting. A new chain (full) starts when
    there is none, when the newest chain's full is from an earlier ``full_every`` slot, or when the
    newest chain cannot be continued (a missing link, an orphan increment); else an increment on
    the newest link."""
    stamp(now)  # aware, or InvalidInput
    chains = group_chains(links)
    if not chains:
        return Step(tier.name, True, "no backup yet", FULL, link_name(tier.name, now, FULL, 0), 0)
    chain = chains[-1]
    newest = chain.newest
    if newest.at > now:
        return Step(tier.name, False, f"the newest backup {newest.name} is later than now ({now.isoformat()}): "
                    "is the clock right? Nothing written (a link stamped earlier would break the chain's order)",
                    problem=True)
    if _slot(now, tier.every) <= _slot(newest.at, tier.every):
        due_at = _EPOCH + (_slot(newest.at, tier.every) + 1) * tier.every
        return Step(tier.name, False, f"{newest.name} is in this {format_duration(tier.every)} slot; next from "
                    f"{due_at.isoformat()}")
    if chain.problem:
        return Step(tier.name, True, f"new chain: the newest cannot be continued ({chain.problem})", FULL,
                    link_name(tier.name, now, FULL, 0), 0)
    full = chain.full
    assert full is not None  # no problem means a full first
    if _slot(now, tier.full_every) > _slot(full.at, tier.full_every):
        return Step(tier.name, True, f"new chain: a new {format_duration(tier.full_every)} period began since the "
                    f"full {full.name}", FULL, link_name(tier.name, now, FULL, 0), 0)
    sequence = newest.sequence + 1
    return Step(tier.name, True, f"increment {sequence} on {newest.name}", INCREMENTAL,
                link_name(tier.name, now, INCREMENTAL, sequence), sequence, newest)


@dataclass(frozen=True)
class PruneDecision:
    """A chain, whether it goes (as a whole), and why."""

    chain: Chain
    delete: bool
    reason: str
    verified: bool | None = None  # None: not checked (not needed for the decision)

    def to_dict(self) -> dict[str, Any]:
        return self.chain.to_dict() | {"delete": self.delete, "reason": self.reason, "verified": self.verified}


def plan_prune(chains: list[Chain], keep: timedelta, now: datetime,
               verified: Callable[[Chain], bool]) -> list[PruneDecision]:
    """Retention over whole chains (deleting a link from a chain would break its later links): a
    chain goes when its newest link is older than ``keep`` at ``now``, except that

    * the newest chain (the one runs extend) is always kept;
    * if it does not verify, the newest chain that does is kept too (the last restorable one);
    * if no chain verifies (damage everywhere, or the wrong key), nothing is deleted.

    ``verified`` is asked lazily, newest first, and only as far back as needed (it reads files).
    Decisions come oldest chain first."""
    if not chains:
        return []
    ordered = sorted(chains, key=lambda c: c.links[0])
    checked: dict[int, bool] = {}
    protected: dict[int, str] = {len(ordered) - 1: "the newest chain (in use)"}
    for index in range(len(ordered) - 1, -1, -1):
        checked[index] = verified(ordered[index])
        if checked[index]:
            if index != len(ordered) - 1:
                protected[index] = "the newest chain that verifies (the newest does not)"
            break
    none_verify = not any(checked.values())
    decisions = []
    for index, chain in enumerate(ordered):
        age = now - chain.newest.at
        expired = age > keep
        if index in protected:
            decision = PruneDecision(chain, False, protected[index], checked.get(index))
        elif none_verify:
            decision = PruneDecision(chain, False, "no chain of this tier verifies: nothing is deleted",
                                     checked.get(index))
        elif expired:
            decision = PruneDecision(chain, True, f"expired: newest link {format_duration(_whole(age))} old, "
                                     f"keep {format_duration(keep)}", checked.get(index))
        else:
            decision = PruneDecision(chain, False, f"within retention ({format_duration(_whole(age))} old, keep "
                                     f"{format_duration(keep)})", checked.get(index))
        decisions.append(decision)
    return decisions


def _whole(age: timedelta) -> timedelta:
    return timedelta(seconds=max(0, int(age.total_seconds())))


# --------------------------------------------------------------------------------------------
# I/O: listing, locking, running, pruning, checking


def list_links(tier: Tier) -> list[Link]:
    """The tier's backup files in its directory (other files, other tiers' names, temporary
    files are ignored), oldest first."""
    links = []
    for entry in os.scandir(tier.directory):
        link = parse_link(entry.name, tier.directory)
        if link is not None and link.tier == tier.name and entry.is_file():
            links.append(link)
    return sorted(links)


@contextmanager
def tier_lock(tier: Tier, wait: timedelta) -> Iterator[None]:
    """Hold the tier directory's exclusive ``flock`` (``.tradestate-backup.lock``); waits at most
    ``wait``, then raises :class:`PolicyBusy`. The lock goes with the process, so a killed run
    never leaves it held."""
    path = tier.directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait.total_seconds()
        pause = 0.02
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PolicyBusy(f"tier {tier.name!r}: another run has held {path} for more than "
                                     f"{format_duration(wait)}") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def tier_key(tier: Tier) -> bytes | None:
    """The tier's encryption key from its key file or variable (None: unencrypted)."""
    if tier.key_file is None and tier.key_env is None:
        return None
    from . import backup as bk

    return bk.load_key(key_file=str(tier.key_file) if tier.key_file else None, key_env=tier.key_env)


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    stamp(now)
    return now.astimezone(timezone.utc)


@dataclass
class TierRun:
    """What a policy run did for one tier: ``written`` (``path``, ``kind``), ``skipped`` (not due),
    ``busy`` (another run held the lock) or ``failed`` (``reason``). ``fell_back``: why the
    increment planned could not be written and a full was written instead."""

    tier: str
    action: str
    reason: str
    kind: str | None = None
    path: str | None = None
    previous: str | None = None
    sequence: int | None = None
    fell_back: str | None = None
    size: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_policy(policy: Policy, url: str | None, *, now: datetime | None = None, seal: bool = False,
               store: Any = None) -> list[TierRun]:
    """Write the next link of every tier that is due at ``now`` (default: the clock), each under
    its tier's lock (planned after the lock is taken, so an overlapping run sees what the other
    wrote). The store is opened (``create=False``) only when some tier is due, unless given.
    A tier whose increment cannot be written (the previous link is damaged or does not match the
    log: the backup interface raises) gets a full backup instead, and says so. Each tier's
    failure is reported in its :class:`TierRun`; the others still run."""
    from . import backup as bk
    from . import open_store

    now = _now(now)
    results: list[TierRun] = []
    opened = None
    try:
        for tier in policy.tiers:
            try:
                with tier_lock(tier, policy.lock_wait):
                    step = plan_tier(tier, list_links(tier), now)
                    if not step.due:
                        results.append(TierRun(tier.name, "failed" if step.problem else "skipped", step.reason))
                        continue
                    key = tier_key(tier)
                    if store is None and opened is None:
                        opened = open_store(url, create=False)
                    target = store if store is not None else opened
                    results.append(_write(bk, target, tier, step, now, key, seal))
            except PolicyBusy as e:
                results.append(TierRun(tier.name, "busy", str(e)))
            except (bk.BackupError, OSError) as e:
                results.append(TierRun(tier.name, "failed", str(e)))
    finally:
        if opened is not None:
            opened.close()
    return results


def _write(bk: Any, store: Any, tier: Tier, step: Step, now: datetime, key: bytes | None, seal: bool) -> TierRun:
    started = time.perf_counter()
    fell_back = None
    assert step.name is not None
    if step.kind == INCREMENTAL:
        assert step.previous is not None
        try:
            _check_link(bk, step.previous.path, key)
            manifest = bk.backup(store, tier.directory / step.name, seal=seal, previous=str(step.previous.path),
                                 key=key)
            return TierRun(tier.name, "written", step.reason, INCREMENTAL, str(tier.directory / step.name),
                           step.previous.name, step.sequence, None, manifest.size, time.perf_counter() - started)
        except bk.BackupError as e:
            fell_back = f"the chain cannot be continued, a new full backup instead: {e}"
    name = link_name(tier.name, now, FULL, 0)
    manifest = bk.backup(store, tier.directory / name, seal=seal, key=key)
    return TierRun(tier.name, "written", fell_back or step.reason, FULL, str(tier.directory / name), None, 0, fell_back,
                   manifest.size, time.perf_counter() - started)


def _check_link(bk: Any, path: Path, key: bytes | None) -> None:
    """Re-read the link an increment would follow, data included (``bk.backup`` reads only its
    manifest): an increment on a damaged link would leave every later link of the chain
    unrestorable until the next full. Raises ``BackupError`` (damaged, wrong key)."""
    bk.verify_link(path, key=key)


def chain_verifier(tier: Tier, key: bytes | None) -> Callable[[Chain], tuple[bool, str]]:
    """``verify(chain) -> (ok, why)``: the names' own problem first, then ``bk.verify_chain``
    (damage, a missing link, a wrong key or a tampered encrypted file: not ok, with the message)."""
    from . import backup as bk

    def verify(chain: Chain) -> tuple[bool, str]:
        if chain.problem:
            return False, chain.problem
        try:
            bk.verify_chain([str(link.path) for link in chain.links], key=key)
        except bk.BackupError as e:
            return False, str(e)
        return True, "verified"

    return verify


@dataclass
class TierPrune:
    """Prune's outcome for one tier: each chain's decision, what was deleted, and an ``error``
    (busy, no key) when nothing could be decided."""

    tier: str
    decisions: list[PruneDecision] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # chain's first link -> why it does not verify
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "chains": [d.to_dict() | {"problem": self.problems.get(d.chain.links[0].name)
                                                             or d.chain.problem} for d in self.decisions],
                "deleted": self.deleted, "error": self.error}


def prune_policy(policy: Policy, *, now: datetime | None = None, dry_run: bool = False) -> list[TierPrune]:
    """Apply each tier's retention (:func:`plan_prune`) under the tier's lock; delete (unless
    ``dry_run``) each doomed chain newest link first, so an interruption never leaves an increment
    without the links before it."""
    now = _now(now)
    results = []
    for tier in policy.tiers:
        outcome = TierPrune(tier.name)
        results.append(outcome)
        try:
            with tier_lock(tier, policy.lock_wait):
                verify = chain_verifier(tier, tier_key(tier))

                def verified(chain: Chain) -> bool:
                    ok, why = verify(chain)
                    if not ok:
                        outcome.problems[chain.links[0].name] = why
                    return ok

                outcome.decisions = plan_prune(group_chains(list_links(tier)), tier.keep, now, verified)
                for decision in outcome.decisions:
                    if not decision.delete:
                        continue
                    for link in reversed(decision.chain.links):
                        if not dry_run:
                            link.path.unlink(missing_ok=True)
                        outcome.deleted.append(str(link.path))
                if outcome.deleted and not dry_run:
                    from . import backup as bk

                    bk._fsync_dir(tier.directory)
        except (PolicyBusy, TradestateError, OSError) as e:
            outcome.error = str(e)
    return results


@dataclass
class ChainCheck:
    """One stored chain of a tier re-verified: ``ok``, or ``problem`` naming the bad link."""

    tier: str
    links: list[str]
    ok: bool
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TierCheck:
    """Check's outcome for one tier: every chain, whether its newest backup is overdue (older than
    twice ``every``: the schedule stopped), and an ``error`` (busy, no key)."""

    tier: str
    chains: list[ChainCheck] = field(default_factory=list)
    newest: str | None = None
    stale: str | None = None
    error: str | None = None
    older: int = 0  # chains not re-read: their newest link is older than ``within``

    @property
    def ok(self) -> bool:
        return self.error is None and self.stale is None and all(c.ok for c in self.chains)

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "ok": self.ok, "chains": [c.to_dict() for c in self.chains],
                "newest": self.newest, "stale": self.stale, "error": self.error, "older": self.older}


def check_policy(policy: Policy, *, now: datetime | None = None, within: timedelta | None = None) -> list[TierCheck]:
    """Re-verify every stored chain of every tier (``bk.verify_chain``), or with ``within`` only
    the chains with a link that recent (the rest are counted in ``older``), under the tier's lock
    so a prune or a run does not change the files mid-check; a tier with no backup, or whose
    newest is older than twice its ``every``, is reported ``stale``."""
    now = _now(now)
    results = []
    for tier in policy.tiers:
        outcome = TierCheck(tier.name)
        results.append(outcome)
        try:
            with tier_lock(tier, policy.lock_wait):
                links = list_links(tier)
                verify = chain_verifier(tier, tier_key(tier))
                for chain in group_chains(links):
                    if within is not None and now - chain.newest.at > within:
                        outcome.older += 1
                        continue
                    ok, why = verify(chain)
                    outcome.chains.append(ChainCheck(tier.name, [str(link.path) for link in chain.links], ok,
                                                     None if ok else why))
        except (PolicyBusy, TradestateError, OSError) as e:
            outcome.error = str(e)
            continue
        if not links:
            outcome.stale = "no backup yet"
        else:
            outcome.newest = links[-1].name
            age = now - max(link.at for link in links)
            if age < timedelta(0):
                outcome.stale = (f"the newest backup {links[-1].name} is later than now ({now.isoformat()}): "
                                 "is the clock right? Runs write nothing until then")
            elif age > 2 * tier.every:
                outcome.stale = (f"the newest backup {links[-1].name} is {format_duration(_whole(age))} old "
                                 f"(every {format_duration(tier.every)}): is the schedule running?")
    return results
