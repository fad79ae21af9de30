"""Backups on a schedule: the policy file, the planning (pure, time passed in), and runs, prunes and
checks on real backup files (SQLite; one run on PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradestate.adapters.store import backup_policy as bp

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
full_every = "1w"
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
    assert not plan.due and "clock" in plan.reason


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
