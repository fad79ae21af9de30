"""Backups on a schedule: the policy file, the planning (pure, time passed in), and runs, prunes and
checks on real backup files (SQLite; one run on PostgreSQL)."""

from __future__ import annotations

import json as jsonlib
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.projector_worker import Clock, write_session
from typer.testing import CliRunner

import tradestate
from tradestate.adapters.store import backup as bk
from tradestate.adapters.store import backup_policy as bp
from tradestate.adapters.store import open_store
from tradestate.cli.main import app

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

SEED_POLICY = """\
# the seed's three tiers
key_env = "{env}"
lock_wait = "5s"

[[tier]]
name = "tier1"
every = "15m"
full_every = "1d"
keep = "7y"
directory = "tier1"

[[tier]]
name = "tier2"
every = "1h"
full_every = "1d"
keep = "2y"
directory = "tier2"

[[tier]]
name = "tier3"
every = "1d"
full_every = "1w"
keep = "30d"
directory = "tier3"
"""


def _policy_dir(tmp_path: Path, text: str = SEED_POLICY, env: str = "TS_TEST_BACKUP_KEY") -> Path:
    for name in ("tier1", "tier2", "tier3"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "policy.toml"
    path.write_text(text.format(env=env))
    return path


def _tier(tmp_path: Path = Path("."), every: str = "15m", full_every: str = "1d", keep: str = "7y") -> bp.Tier:
    return bp.Tier("tier1", bp.parse_duration(every), bp.parse_duration(full_every), bp.parse_duration(keep),
                   tmp_path)


# ------------------------------------------------------------------------------------------
# the policy file


def test_durations():
    assert bp.parse_duration("15m") == timedelta(minutes=15)
    assert bp.parse_duration("1h30m") == timedelta(minutes=90)
    assert bp.parse_duration("7y") >= timedelta(days=7 * 365 + 2)  # never short of 7 calendar years
    for bad in ("15", "15 minutes", "0m", "-1d", "", "1x", 15):
        with pytest.raises(ValueError):
            bp.parse_duration(bad)
    for text in ("15m", "1d", "7y", "2w", "1h30m"):
        assert bp.parse_duration(bp.format_duration(bp.parse_duration(text))) == bp.parse_duration(text)


def test_seed_policy_loads(tmp_path):
    policy = bp.load_policy(_policy_dir(tmp_path))
    assert [t.name for t in policy.tiers] == ["tier1", "tier2", "tier3"]
    tier1, tier2, tier3 = policy.tiers
    assert (tier1.every, tier1.full_every, tier1.keep) == (timedelta(minutes=15), timedelta(days=1),
                                                           bp.parse_duration("7y"))
    assert (tier2.every, tier2.keep) == (timedelta(hours=1), bp.parse_duration("2y"))
    assert (tier3.every, tier3.keep) == (timedelta(days=1), timedelta(days=30))
    assert tier1.directory == (tmp_path / "tier1").resolve()  # relative to the policy file
    assert tier1.key_env == "TS_TEST_BACKUP_KEY" and tier1.key_file is None
    assert policy.lock_wait == timedelta(seconds=5)


@pytest.mark.parametrize("change, message", [
    (("every = \"15m\"", "evry = \"15m\""), r"policy.toml:7: tier 'tier1': unknown key 'evry'"),
    (("every = \"1h\"", "every = \"1 hour\""), r"policy.toml:14: tier 'tier2': every: '1 hour' is not a duration"),
    (("keep = \"30d\"", "keep = \"30\""), r"policy.toml:23: tier 'tier3': keep: '30' is not a duration"),
    (("directory = \"tier2\"", "directory = \"tier1\""), r"policy.toml:17: tier 'tier2': directory .* is also "
                                                            r"the directory of tier 'tier1'"),
    (("directory = \"tier3\"", "directory = \"nowhere\""), r"policy.toml:24: tier 'tier3': directory .*nowhere' "
                                                              r"does not exist"),
    (("name = \"tier2\"", "name = \"tier1\""), r"policy.toml:13: tier name 'tier1' is used twice"),
    (("lock_wait = \"5s\"", "lockwait = \"5s\""), r"policy.toml:3: unknown key 'lockwait'"),
    (("key_env = \"TS_TEST_BACKUP_KEY\"", "key = \"00112233\""), r"policy.toml:2: key: the key itself never goes"),
    (("full_every = \"1d\"", "full_every = \"5m\""), r"policy.toml:8: tier 'tier1': full_every \(5m\) is shorter"),
    (("keep = \"7y\"\n", ""), r"policy.toml:5: tier 'tier1': keep is missing"),
    (("[[tier]]\nname = \"tier3\"", "[[tier]\nname = \"tier3\""), r"policy.toml: not a valid TOML file: .*line 19"),
])
def test_bad_policies_are_named(tmp_path, change, message):
    text = SEED_POLICY.format(env="TS_TEST_BACKUP_KEY")
    assert change[0] in text
    path = _policy_dir(tmp_path, text.replace(change[0], change[1], 1).replace("{", "{{").replace("}", "}}"))
    with pytest.raises(bp.PolicyError, match=message):
        bp.load_policy(path)


def test_no_tiers_and_two_key_sources(tmp_path):
    (tmp_path / "p.toml").write_text('lock_wait = "1m"\n')
    with pytest.raises(bp.PolicyError, match="no tiers"):
        bp.load_policy(tmp_path / "p.toml")
    (tmp_path / "d").mkdir()
    (tmp_path / "p.toml").write_text('[[tier]]\nname = "a"\nevery = "1h"\nkeep = "1d"\ndirectory = "d"\n'
                                     'key_file = "k"\nkey_env = "K"\n')
    with pytest.raises(bp.PolicyError, match=r"p.toml:7: tier 'a': key_file and key_env are both given"):
        bp.load_policy(tmp_path / "p.toml")


# ------------------------------------------------------------------------------------------
# names, chains and the schedule (pure)


def test_link_names_sort_and_parse():
    names = [bp.link_name("tier1", T0 + timedelta(minutes=15 * i), bp.INCREMENTAL if i else bp.FULL, i)
             for i in range(12)]
    assert names[0] == "tier1-20260101T000000Z-full-000000.tsbackup"
    assert names[3] == "tier1-20260101T004500Z-inc-000003.tsbackup"
    assert sorted(names) == names
    parsed = [bp.parse_link(n) for n in names]
    assert [p.sequence for p in parsed] == list(range(12)) and parsed[0].kind == bp.FULL
    assert bp.parse_link("tier1-20260101T000000Z-full-000000.tsbackup.tmp") is None
    assert bp.parse_link("notes.txt") is None


def _simulate(tier: bp.Tier, start: datetime, end: datetime, step: timedelta) -> list[bp.Link]:
    """Run the planner every ``step`` (cron) from start to end, as if every backup succeeded."""
    links: list[bp.Link] = []
    now = start
    while now < end:
        plan = bp.plan_tier(tier, links, now)
        if plan.due:
            links.append(bp.parse_link(plan.name))
        now += step
    return links


def test_schedule_one_link_per_slot_and_a_full_per_day():
    tier = _tier()
    links = _simulate(tier, T0 + timedelta(seconds=7), T0 + timedelta(days=2, seconds=7), timedelta(minutes=5))
    assert len(links) == 2 * 96  # one per 15-minute slot, no drift with a 5-minute cron
    chains = bp.group_chains(links)
    assert [len(c.links) for c in chains] == [96, 96]
    assert all(c.problem is None for c in chains)
    assert chains[1].full.at.date() == (T0 + timedelta(days=1)).date()


def test_schedule_starts_a_new_chain_when_the_newest_is_broken():
    tier = _tier()
    links = _simulate(tier, T0, T0 + timedelta(hours=1), timedelta(minutes=15))
    del links[1]  # a link of the chain is gone
    plan = bp.plan_tier(tier, links, T0 + timedelta(hours=1))
    assert plan.due and plan.kind == bp.FULL and "missing" in plan.reason
    orphan = [bp.parse_link(bp.link_name("tier1", T0, bp.INCREMENTAL, 4))]
    assert bp.plan_tier(tier, orphan, T0 + timedelta(hours=1)).kind == bp.FULL


def test_schedule_refuses_a_clock_behind_the_newest_backup():
    tier = _tier()
    links = [bp.parse_link(bp.link_name("tier1", T0, bp.FULL, 0))]
    plan = bp.plan_tier(tier, links, T0 - timedelta(hours=1))
    assert not plan.due and plan.problem and "clock" in plan.reason


@settings(max_examples=60, deadline=None)
@given(every=st.sampled_from(["5m", "15m", "1h", "1d"]), full=st.sampled_from([1, 2, 4, 24]),
       cron=st.integers(1, 20), hours=st.integers(1, 72), offset=st.integers(0, 3599))
def test_schedule_properties(every, full, cron, hours, offset):
    tier = _tier(every=every, full_every=bp.format_duration(bp.parse_duration(every) * full))
    start = T0 + timedelta(seconds=offset)
    links = _simulate(tier, start, start + timedelta(hours=hours), timedelta(minutes=cron))
    slots = [bp._slot(link.at, tier.every) for link in links]
    assert len(slots) == len(set(slots))  # never two in one slot
    for a, b in zip(links, links[1:]):  # never a gap of more than a slot and a cron interval
        assert b.at - a.at <= tier.every + timedelta(minutes=cron)
    for chain in bp.group_chains(links):
        assert chain.problem is None
        assert len({bp._slot(link.at, tier.full_every) for link in chain.links}) == 1


# ------------------------------------------------------------------------------------------
# retention (pure)


@st.composite
def _tier_history(draw):
    """Chains of a tier over up to ~10 years (sometimes orphans or gaps), and which do not verify."""
    links = []
    at = T0
    for _ in range(draw(st.integers(0, 8))):
        at += timedelta(days=draw(st.integers(1, 400)))
        n = draw(st.integers(1, 5))
        kinds = [bp.FULL] + [bp.INCREMENTAL] * (n - 1)
        if draw(st.integers(0, 9)) == 0:
            kinds[0] = bp.INCREMENTAL  # its full is gone
        for seq, kind in enumerate(kinds):
            links.append(bp.parse_link(bp.link_name("tier1", at + timedelta(hours=seq), kind, seq)))
    chains = bp.group_chains(links)
    bad = draw(st.sets(st.integers(0, max(len(chains) - 1, 0))))
    return chains, bad


@settings(max_examples=300, deadline=None)
@given(history=_tier_history(), keep_days=st.integers(1, 3000), later=st.integers(0, 4000))
def test_prune_properties(history, keep_days, later):
    chains, bad = history
    keep = timedelta(days=keep_days)
    now = (chains[-1].newest.at if chains else T0) + timedelta(days=later)
    asked = []

    def verified(chain):
        asked.append(chain)
        return chains.index(chain) not in bad and chain.problem is None

    decisions = bp.plan_prune(chains, keep, now, verified)
    assert [d.chain for d in decisions] == chains
    deleted = {link for d in decisions if d.delete for link in d.chain.links}
    kept = {link for d in decisions if not d.delete for link in d.chain.links}
    assert not deleted & kept  # a chain goes whole or stays whole
    for d in decisions:
        if d.delete:  # only what retention says
            assert now - d.chain.newest.at > keep
    if chains:
        assert not decisions[-1].delete  # the newest chain is always kept
        good = [i for i, c in enumerate(chains) if i not in bad and c.problem is None]
        if good:  # the newest one that verifies is kept (those after it do not verify: retention decides)
            assert not decisions[good[-1]].delete
            assert all(i in bad or c.problem for i, c in enumerate(chains[good[-1] + 1:], good[-1] + 1))
        else:
            assert not deleted
        for d in decisions:  # kept only with a reason: protected, or within retention
            if not d.delete and now - d.chain.newest.at > keep:
                assert "newest" in d.reason or "nothing is deleted" in d.reason
        # an increment is never left without its full: every kept chain still starts as it did
        for d in decisions:
            if not d.delete and d.chain.full is not None:
                assert d.chain.full in kept
    assert len(asked) <= len(chains)


def test_prune_over_years_keeps_exactly_the_retention():
    tier = _tier(every="1d", full_every="1w", keep="30d")
    links = _simulate(tier, T0, T0 + timedelta(days=365), timedelta(hours=6))
    chains = bp.group_chains(links)
    now = links[-1].at
    decisions = bp.plan_prune(chains, tier.keep, now, lambda c: True)
    kept = [d.chain for d in decisions if not d.delete]
    assert all(now - c.newest.at <= tier.keep for c in kept)
    assert all(now - d.chain.newest.at > tier.keep for d in decisions if d.delete)
    assert 4 <= len(kept) <= 6  # a month of weekly chains


# ------------------------------------------------------------------------------------------
# real backups (SQLite files; one run on PostgreSQL)

KEY_ENV = "TS_TEST_BACKUP_POLICY_KEY"


def _append(url: str, n: int = 6, seed: int = 1) -> int:
    with tradestate.connect(url, clock=Clock()) as client:
        return write_session(client, n, seed=seed)


def _small_policy(tmp_path: Path, tiers: list[tuple[str, str, str, str]], *, key: bool = False,
                  lock_wait: str = "5s") -> bp.Policy:
    """A policy file with ``tiers`` = (name, every, full_every, keep), each in tmp_path/<name>."""
    lines = [f'lock_wait = "{lock_wait}"']
    if key:
        lines.append(f'key_env = "{KEY_ENV}"')
    for name, every, full_every, keep in tiers:
        (tmp_path / name).mkdir(exist_ok=True)
        lines += ["", "[[tier]]", f'name = "{name}"', f'every = "{every}"', f'full_every = "{full_every}"',
                  f'keep = "{keep}"', f'directory = "{name}"']
    path = tmp_path / "policy.toml"
    path.write_text("\n".join(lines) + "\n")
    return bp.load_policy(path)


def _files(tmp_path: Path, tier: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / tier).iterdir() if p.name.endswith(bp.SUFFIX))


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _simulate_runs(policy: bp.Policy, url: str, start: datetime, runs: int, step: timedelta,
                   append: int = 3) -> list[list[bp.TierRun]]:
    out = []
    with open_store(url, create=False) as store:
        for i in range(runs):
            if append:
                _append(url, append, seed=100 + i)
            out.append(bp.run_policy(policy, url, now=start + i * step, store=store))
    return out


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, os.urandom(32).hex())
    return KEY_ENV


def test_run_over_simulated_time_writes_fulls_and_increments(tmp_path, sqlite_url, key_env):
    _append(sqlite_url, 20)
    policy = _small_policy(tmp_path, [("t1", "15m", "1h", "7y"), ("t2", "1h", "2h", "2y")], key=True)
    runs = _simulate_runs(policy, sqlite_url, T0 + timedelta(seconds=30), 30, timedelta(minutes=5))
    t1, t2 = _files(tmp_path, "t1"), _files(tmp_path, "t2")
    assert len(t1) == 10 and len(t2) == 3  # 2.5 hours: one per 15-minute slot, one per hour
    assert [n.split("-")[2] for n in t1] == ["full", "inc", "inc", "inc"] * 2 + ["full", "inc"]
    assert [n.split("-")[2] for n in t2] == ["full", "inc", "full"]
    assert all(r.action in ("written", "skipped") for run in runs for r in run)
    key = bytes.fromhex(os.environ[key_env])
    for chain in bp.group_chains(bp.list_links(policy.tiers[0])):
        bk.verify_chain([str(link.path) for link in chain.links], key=key)
    manifest = bk.read_manifest(tmp_path / "t1" / t1[-1], key=key)
    assert manifest.kind == "incremental" and manifest.sequence == 1
    # the newest chain restores to the live log's head
    newest = bp.group_chains(bp.list_links(policy.tiers[0]))[-1]
    target = f"sqlite:///{tmp_path}/restored.db"
    bk.restore(target, [str(link.path) for link in newest.links], key=key)
    with open_store(target, create=False) as restored, open_store(sqlite_url, create=False) as live:
        assert restored.trading.head() == manifest.logs["ts_events"]["head"] <= live.trading.head()


def test_a_chain_that_cannot_be_continued_falls_back_to_a_full(tmp_path, sqlite_url):
    _append(sqlite_url, 10)
    policy = _small_policy(tmp_path, [("t1", "15m", "1d", "7y")])
    _simulate_runs(policy, sqlite_url, T0, 2, timedelta(minutes=15))
    newest = tmp_path / "t1" / _files(tmp_path, "t1")[-1]
    _damage(newest)
    [run] = _simulate_runs(policy, sqlite_url, T0 + timedelta(minutes=30), 1, timedelta(minutes=15))
    assert run[0].action == "written" and run[0].kind == bp.FULL and run[0].fell_back
    assert "cannot be continued" in run[0].reason
    assert _files(tmp_path, "t1")[-1].split("-")[2] == "full"


def test_prune_over_simulated_years_keeps_exactly_the_retention(tmp_path, sqlite_url):
    _append(sqlite_url, 10)
    policy = _small_policy(tmp_path, [("t3", "4w", "12w", "1y")])
    start = T0 + timedelta(hours=1)
    _simulate_runs(policy, sqlite_url, start, 40, timedelta(weeks=4), append=1)  # ~3 years
    before = bp.group_chains(bp.list_links(policy.tiers[0]))
    assert len(before) >= 12
    now = start + 40 * timedelta(weeks=4)
    expected_kept = [c for c in before if now - c.newest.at <= bp.parse_duration("1y")]
    result = bp.prune_policy(policy, now=now, dry_run=True)
    assert len(_files(tmp_path, "t3")) == sum(len(c.links) for c in before)  # dry run: nothing gone
    [tier] = bp.prune_policy(policy, now=now)
    after = bp.group_chains(bp.list_links(policy.tiers[0]))
    assert [c.links for c in after] == [c.links for c in expected_kept]
    assert len(tier.deleted) == sum(len(c.links) for c in before) - sum(len(c.links) for c in after)
    assert result[0].deleted == tier.deleted
    assert all(c.problem is None for c in after)  # no increment left without its full


def test_prune_never_deletes_what_is_still_needed(tmp_path, sqlite_url):
    _append(sqlite_url, 10)
    policy = _small_policy(tmp_path, [("t1", "1d", "2d", "7d")])
    _simulate_runs(policy, sqlite_url, T0, 6, timedelta(days=1), append=2)  # 3 chains of 2
    chains = bp.group_chains(bp.list_links(policy.tiers[0]))
    assert [len(c.links) for c in chains] == [2, 2, 2]
    far = T0 + timedelta(days=400)  # everything expired: the newest chain stays anyway
    [tier] = bp.prune_policy(policy, now=far, dry_run=True)
    assert [d.delete for d in tier.decisions] == [True, True, False]
    # the newest chain's increment is damaged: it does not verify, so the one before it stays too
    _damage(chains[2].links[1].path)
    [tier] = bp.prune_policy(policy, now=far)
    assert [d.delete for d in tier.decisions] == [True, False, False]
    assert "the newest chain that verifies" in tier.decisions[1].reason
    assert tier.decisions[2].verified is False and chains[2].links[1].name in tier.problems[chains[2].links[0].name]
    assert _files(tmp_path, "t1") == [link.name for c in chains[1:] for link in c.links]


def test_prune_with_the_wrong_key_deletes_nothing(tmp_path, sqlite_url, key_env, monkeypatch):
    _append(sqlite_url, 10)
    policy = _small_policy(tmp_path, [("t1", "1d", "1d", "2d")], key=True)
    _simulate_runs(policy, sqlite_url, T0, 4, timedelta(days=1), append=1)
    monkeypatch.setenv(key_env, os.urandom(32).hex())
    [tier] = bp.prune_policy(policy, now=T0 + timedelta(days=30))
    assert not tier.deleted and all(d.verified is False for d in tier.decisions)
    assert len(_files(tmp_path, "t1")) == 4


def test_check_finds_a_damaged_file(tmp_path, sqlite_url):
    _append(sqlite_url, 10)
    policy = _small_policy(tmp_path, [("t1", "15m", "1h", "7y"), ("t2", "1h", "1d", "2y")])
    now = T0 + timedelta(hours=2)
    _simulate_runs(policy, sqlite_url, now - timedelta(minutes=75), 6, timedelta(minutes=15))
    results = bp.check_policy(policy, now=now)
    assert all(r.ok for r in results), [r.to_dict() for r in results]
    victim = tmp_path / "t1" / _files(tmp_path, "t1")[2]  # an increment of the 01:00 chain
    _damage(victim)
    t1, t2 = bp.check_policy(policy, now=now)
    assert t2.ok and not t1.ok
    [bad] = [c for c in t1.chains if not c.ok]
    assert victim.name in bad.problem
    assert bp.check_policy(policy, now=now + timedelta(days=1))[1].stale  # the schedule stopped
    assert "clock" in bp.check_policy(policy, now=now - timedelta(days=1))[1].stale
    [run, _] = bp.run_policy(policy, sqlite_url, now=now - timedelta(days=1))
    assert run.action == "failed" and "clock" in run.reason
    recent, _ = bp.check_policy(policy, now=now, within=timedelta(minutes=10))  # the damaged chain is older
    assert recent.ok and recent.older == 2 and len(recent.chains) == 1


def test_two_overlapping_runs_write_one_backup(tmp_path, sqlite_url):
    _append(sqlite_url, 30)
    policy = _small_policy(tmp_path, [("t1", "15m", "1d", "7y")])
    barrier = threading.Barrier(2)
    results: list[list[bp.TierRun]] = []

    def run() -> None:
        barrier.wait(5)
        results.append(bp.run_policy(policy, sqlite_url, now=T0))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r[0].action for r in results) == ["skipped", "written"]
    assert len(_files(tmp_path, "t1")) == 1


def test_a_run_waits_a_bounded_time_for_the_lock(tmp_path, sqlite_url):
    _append(sqlite_url, 5)
    policy = _small_policy(tmp_path, [("t1", "15m", "1d", "7y")], lock_wait="1s")
    with bp.tier_lock(policy.tiers[0], timedelta(seconds=1)):
        [result] = bp.run_policy(policy, sqlite_url, now=T0)
    assert result.action == "busy" and "held" in result.reason
    assert _files(tmp_path, "t1") == []


@pytest.mark.postgres
def test_run_on_postgresql(tmp_path, pg_url):
    _append(pg_url, 20)
    policy = _small_policy(tmp_path, [("t1", "15m", "1h", "7y")])
    _simulate_runs(policy, pg_url, T0, 5, timedelta(minutes=15))
    names = _files(tmp_path, "t1")
    assert [n.split("-")[2] for n in names] == ["full", "inc", "inc", "inc", "full"]
    [first, second] = bp.group_chains(bp.list_links(policy.tiers[0]))
    bk.verify_chain([str(link.path) for link in first.links])
    assert all(r.ok for r in bp.check_policy(policy, now=T0 + timedelta(hours=1)))


# ------------------------------------------------------------------------------------------
# the command line


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_run_check_prune(tmp_path, sqlite_url, key_env):
    _append(sqlite_url, 10)
    policy = _small_policy(tmp_path, [("t1", "1y", "1y", "2y")], key=True)
    code, out, _ = _cli("backup", "--policy", str(policy.path), "--db", sqlite_url, "--json")
    assert code == 0, out
    [tier] = jsonlib.loads(out)["tiers"]
    assert tier["action"] == "written" and tier["kind"] == "full"
    code, out, _ = _cli("backup", "--policy", str(policy.path), "--db", sqlite_url)
    assert code == 0 and "t1: skipped" in out  # not due again in the same slot
    code, out, _ = _cli("backup", "check", "--policy", str(policy.path), "--json")
    assert code == 0 and jsonlib.loads(out)["ok"], out
    _damage(Path(tier["path"]))
    code, out, _ = _cli("backup", "check", "--policy", str(policy.path))
    assert code == 1 and "DAMAGED" in out and Path(tier["path"]).name in out.replace("\n", "")
    code, out, _ = _cli("backup", "check", "--policy", str(policy.path), "--within", "2d", "--json")
    assert code == 1 and not jsonlib.loads(out)["tiers"][0]["chains"][0]["ok"]  # the newest chain is recent
    code, _, err = _cli("backup", "check", "--policy", str(policy.path), "--within", "2 days")
    assert code == 2 and "--within" in err
    code, out, _ = _cli("backup", "prune", "--policy", str(policy.path), "--json")
    assert code == 1 and not jsonlib.loads(out)["tiers"][0]["deleted"]  # the only chain: never deleted
    assert Path(tier["path"]).exists()


def test_cli_prune_deletes_expired_chains_and_says_why(tmp_path, sqlite_url):
    _append(sqlite_url, 10)
    policy = _small_policy(tmp_path, [("t3", "1d", "1w", "30d")])
    _simulate_runs(policy, sqlite_url, T0, 21, timedelta(days=1), append=1)  # January 2026: 3 weekly chains
    code, out, _ = _cli("backup", "prune", "--policy", str(policy.path), "--dry-run")
    assert code == 0 and "would delete" in out and "expired" in out and len(_files(tmp_path, "t3")) == 21
    code, out, _ = _cli("backup", "prune", "--policy", str(policy.path), "--json")
    decisions = jsonlib.loads(out)["tiers"][0]["chains"]
    assert code == 0 and [d["delete"] for d in decisions][-1] is False
    assert "the newest chain" in decisions[-1]["reason"]
    remaining = bp.group_chains(bp.list_links(policy.tiers[0]))
    assert len(remaining) == 1 and remaining[0].problem is None and remaining[0].full is not None


def test_cli_refuses_bad_policies_and_mixed_options(tmp_path, sqlite_url):
    _append(sqlite_url, 3)
    policy = _small_policy(tmp_path, [("t1", "15m", "1d", "7y")])
    policy.path.write_text(policy.path.read_text().replace('every = "15m"', 'every = "15 min"'))
    code, _, err = _cli("backup", "--policy", str(policy.path), "--db", sqlite_url)
    assert code == 2 and "policy.toml:5: tier 't1': every: '15 min' is not a duration" in err
    code, _, err = _cli("backup", "--policy", str(policy.path), "--to", str(tmp_path / "x"))
    assert code == 2 and "--policy takes the files" in err
    code, _, err = _cli("backup", "check")
    assert code == 2 and "--policy" in err


def test_two_overlapping_cron_runs_write_one_backup(tmp_path, sqlite_url):
    """Two processes started at once (a slow run and the next cron tick): one writes, one skips."""
    _append(sqlite_url, 30)
    policy = _small_policy(tmp_path, [("t1", "1y", "1y", "2y")], lock_wait="30s")
    command = [sys.executable, "-m", "tradestate.cli", "backup", "--policy", str(policy.path), "--db", sqlite_url,
               "--json"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    actions = sorted(jsonlib.loads(out)["tiers"][0]["action"] for out, _ in outs)
    assert actions == ["skipped", "written"]
    assert len(_files(tmp_path, "t1")) == 1
