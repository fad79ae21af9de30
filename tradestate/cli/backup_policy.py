"""Backups on a schedule: ``tradestate backup --policy FILE``, ``backup prune`` and ``backup check --policy``.

``register(backup_app)`` adds ``prune`` to the ``backup`` group; the group's callback calls
:func:`run_policy_command` when ``--policy`` is given, and ``backup check`` calls
:func:`check_policy_command` for its ``--policy`` form.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import ExitCode, JsonOption, command, exit_codes, fail

PolicyOption = Annotated[str, typer.Option("--policy", help="The backup policy file (TOML: tiers with every, "
                                           "full_every, keep, directory, key_file/key_env).")]


def _load(policy: str) -> Any:
    from ..adapters.store import backup_policy as bp

    try:
        return bp.load_policy(policy)
    except bp.PolicyError as e:
        fail(str(e))


def run_policy_command(policy: str, db: str | None, *, json: bool = False, seal: bool = False,
                       config: str | None = None) -> None:
    """``tradestate backup --policy FILE [--db URL]``: write the next link of every due tier (for
    cron or a systemd timer). Exit 0 when every tier is done, not due, or busy (another run holds
    its lock: that run writes it); 1 when a tier's backup could not be written; 2 for a bad policy."""
    from ..adapters.store import backup_policy as bp
    from ..render import console, to_json
    from .common import settings

    loaded = _load(policy)
    url = settings(config, db=db).db
    results = bp.run_policy(loaded, url, seal=seal)
    ok = all(r.action != "failed" for r in results)
    if json:
        print(to_json({"ok": ok, "policy": policy, "tiers": [r.to_dict() for r in results],
                       "exit_code": int(ExitCode.OK if ok else ExitCode.PROBLEM)}))
    else:
        for r in results:
            if r.action == "written":
                console.print(f"[bold green]{r.tier}[/]: {r.kind} backup written: {r.path} ({r.size:,} bytes, "
                              f"{r.seconds:.2f} s); {r.reason}", highlight=False)
                if r.fell_back:
                    console.print(f"  [bold yellow]fell back to a full backup[/]: {r.fell_back}", highlight=False)
            elif r.action == "failed":
                console.print(f"[bold red]{r.tier}: FAILED[/]: {r.reason}", highlight=False)
            else:
                console.print(f"{r.tier}: {r.action}: {r.reason}", highlight=False)
    raise typer.Exit(ExitCode.OK if ok else ExitCode.PROBLEM)


def check_policy_command(policy: str, *, json: bool = False, within: str | None = None) -> None:
    """``tradestate backup check --policy FILE [--within DURATION]``: re-verify every stored chain of
    every tier (or those with a link newer than ``within``); exit 1 naming each damaged chain (its
    first bad link) or a tier whose schedule stopped."""
    from ..adapters.store import backup_policy as bp
    from ..render import console, to_json

    loaded = _load(policy)
    recent = None
    if within is not None:
        try:
            recent = bp.parse_duration(within)
        except ValueError as e:
            fail(f"--within: {e}")
    results = bp.check_policy(loaded, within=recent)
    ok = all(r.ok for r in results)
    if json:
        print(to_json({"ok": ok, "policy": policy, "tiers": [r.to_dict() for r in results],
                       "exit_code": int(ExitCode.OK if ok else ExitCode.PROBLEM)}))
    else:
        for r in results:
            good = sum(c.ok for c in r.chains)
            if r.error:
                console.print(f"[bold red]{r.tier}: NOT CHECKED[/]: {r.error}", highlight=False)
                continue
            verdict = "[bold green]ok[/]" if r.ok else "[bold red]PROBLEM[/]"
            console.print(f"{r.tier}: {verdict}: {good} of {len(r.chains)} chains verify "
                          f"({sum(len(c.links) for c in r.chains)} files), newest {r.newest or '-'}"
                          + (f"; {r.older} older chains not re-read" if r.older else ""), highlight=False)
            for c in r.chains:
                if not c.ok:
                    console.print(f"  [bold red]DAMAGED[/] chain of {len(c.links)} links from {c.links[0]}: "
                                  f"{c.problem}", highlight=False)
            if r.stale:
                console.print(f"  [bold red]STALE[/]: {r.stale}", highlight=False)
    raise typer.Exit(ExitCode.OK if ok else ExitCode.PROBLEM)


def register(backup_app: typer.Typer) -> None:
    """Add ``prune`` to the ``tradestate backup`` group."""

    @backup_app.command("prune", epilog=exit_codes("a tier could not be pruned, or a chain does not verify "
                                                   "(named)"))
    @command
    def prune(
        policy: PolicyOption,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing.")] = False,
        json: JsonOption = False,
    ) -> None:
        """Apply each tier's retention to whole chains: a chain goes when its newest link is older than
        `keep`. The newest chain of a tier is always kept, and if it does not verify, the newest one
        that does; if none verifies, nothing is deleted."""
        from ..adapters.store import backup_policy as bp
        from ..render import console, to_json

        results = bp.prune_policy(_load(policy), dry_run=dry_run)
        damaged = [d for r in results for d in r.decisions if d.verified is False]
        ok = all(r.error is None for r in results) and not damaged
        if json:
            print(to_json({"ok": ok, "dry_run": dry_run, "policy": policy, "tiers": [r.to_dict() for r in results],
                           "exit_code": int(ExitCode.OK if ok else ExitCode.PROBLEM)}))
            raise typer.Exit(ExitCode.OK if ok else ExitCode.PROBLEM)
        verb = "would delete" if dry_run else "deleted"
        for r in results:
            if r.error:
                console.print(f"[bold red]{r.tier}: NOT PRUNED[/]: {r.error}", highlight=False)
                continue
            gone = [d for d in r.decisions if d.delete]
            console.print(f"{r.tier}: {len(r.decisions) - len(gone)} chains kept, {len(gone)} {verb} "
                          f"({len(r.deleted)} files)", highlight=False)
            for d in r.decisions:
                first = d.chain.links[0].name
                what = f"chain {first} ({len(d.chain.links)} links, newest {d.chain.newest.at.isoformat()})"
                if d.delete:
                    console.print(f"  [yellow]{verb}[/] {what}: {d.reason}", highlight=False)
                else:
                    console.print(f"  kept {what}: {d.reason}", highlight=False)
                if d.verified is False:
                    console.print(f"    [bold red]does not verify[/]: {r.problems.get(first) or d.chain.problem}",
                                  highlight=False)
        raise typer.Exit(ExitCode.OK if ok else ExitCode.PROBLEM)
