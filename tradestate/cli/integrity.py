"""``tradestate verify``, ``backup`` and ``restore``: the digest chain and backups of the log."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Optional

import typer

from .common import ConfigOption, DbOption, ExitCode, JsonOption, command, exit_codes, fail, open_log, settings


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Any]:
    """A progress callback (done, total): a bar on a terminal, nothing otherwise."""
    from ..render import err_console as console

    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


TRADING = "ts_events"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("the log was altered or makes no sense (the first bad position is named)"))
    @command
    def verify(
        db: DbOption = None,
        json: JsonOption = False,
        seal: Annotated[bool, typer.Option("--seal", help="Seal the unsealed tail first (writes to the chain).")] = False,
        anchors: Annotated[Optional[str], typer.Option(
            "--anchors", help="Also check the chain against this file of signed anchors (tradestate anchor export).")] = None,
        public_key: Annotated[Optional[str], typer.Option(
            "--public-key", help="The ed25519 public key (PEM) the anchors are signed with.")] = None,
        meaning: Annotated[bool, typer.Option(
            "--meaning/--no-meaning", help="Also check what the rows mean (intents first, contiguous versions, "
            "references resolve).")] = True,
        config: ConfigOption = None,
    ) -> None:
        """Walk the log's digest chain and check its meaning (and its anchors); exit 0 if intact, 1 if
        altered (naming the first bad position)."""
        from ..adapters.store import anchor as anc
        from ..adapters.store import digest
        from ..render import console, to_json

        if (anchors is None) != (public_key is None):
            fail("--anchors and --public-key go together")
        store = open_log(settings(config, db=db).db)
        try:
            sealed = digest.seal(store) if seal else None
            with _progress("verifying", not json) as progress:
                result = digest.verify(store, progress=progress)
            sense = digest.verify_meaning(store) if meaning else None
            anchored = None
            if anchors is not None:
                try:
                    anchored = anc.verify_anchors(store, anchors, public_key)  # type: ignore[arg-type]
                except anc.AnchorError as e:
                    fail(str(e))
        finally:
            store.close()
        ok = result.ok and (sense is None or sense.ok) and (anchored is None or anchored.ok)
        if json:
            payload = result.to_dict()
            if result.ok and sense is not None and not sense.ok:
                payload.update(ok=False, first_bad_position=sense.first_bad_position, problem=sense.problem,
                               detail=f"{TRADING}: {sense.detail}", log=TRADING)
            elif result.ok and anchored is not None and not anchored.ok:
                payload.update(ok=False, first_bad_position=anchored.first_bad_position, problem=anchored.problem,
                               detail=f"{TRADING}: {anchored.detail}", log=TRADING)
            payload["meaning"] = sense.to_dict() if sense is not None else None
            payload["anchors"] = anchored.to_dict() if anchored is not None else None
            payload["exit_code"] = 0 if ok else 1
            if sealed is not None:
                payload["sealed"] = sealed.to_dict()
            print(to_json(payload))
        else:
            from rich.table import Table

            if sealed is not None:
                console.print(f"sealed {sealed.events} events in {sealed.ranges} ranges ({sealed.seconds:.2f} s)")
            table = Table(title="digest chain")
            for column in ("log", "sealed up to", "head", "checked", "unsealed", "last digest"):
                table.add_column(column, justify="left" if column in ("log", "last digest") else "right")
            for log, info in result.logs.items():
                table.add_row(log, str(info["sealed_upto"]), str(info["head"]), str(info["checked_events"]),
                              str(info["unsealed_events"]), info["last_digest"][:16])
            console.print(table)
            rate = result.checked_events / result.seconds if result.seconds else 0
            if result.ok:
                console.print(f"[bold green]ok[/]: {result.detail} ({result.checked_events} events in "
                              f"{result.seconds:.2f} s, {rate:,.0f}/s)", highlight=False)
            else:
                console.print(f"[bold red]ALTERED[/]: {result.log} first bad position "
                              f"[bold]{result.first_bad_position}[/] ({result.problem}): {result.detail}",
                              highlight=False)
            if sense is not None:
                if sense.ok:
                    console.print(f"[bold green]meaning ok[/]: {sense.detail} ({sense.checked_events} events)",
                                  highlight=False)
                else:
                    console.print(f"[bold red]MEANINGLESS[/]: {TRADING} first bad position "
                                  f"[bold]{sense.first_bad_position}[/] ({sense.problem}): {sense.detail}",
                                  highlight=False)
            if anchored is not None:
                if anchored.ok:
                    console.print(f"[bold green]anchors ok[/]: {anchored.detail}", highlight=False)
                else:
                    console.print(f"[bold red]ANCHOR MISMATCH[/]: first bad position "
                                  f"[bold]{anchored.first_bad_position}[/] ({anchored.problem}): {anchored.detail}",
                                  highlight=False)
        raise typer.Exit(ExitCode.OK if ok else ExitCode.PROBLEM)

    anchor_app = typer.Typer(no_args_is_help=True, add_completion=False,
                             help="Signed anchors of the digest chain, kept outside the database.")
    app.add_typer(anchor_app, name="anchor")

    @anchor_app.command("keygen", epilog=exit_codes())
    @command
    def anchor_keygen(
        key: Annotated[str, typer.Option("--key", help="Where to write the private key (PEM, mode 0600; never "
                                         "overwritten).")] = "anchor-ed25519.pem",
        public_key: Annotated[str, typer.Option("--public-key", help="Where to write the public key (PEM).")] =
        "anchor-ed25519.pub.pem",
        json: JsonOption = False,
        config: ConfigOption = None,  # noqa: ARG001 - every command takes one; keygen needs no setting
    ) -> None:
        """Make an ed25519 key pair for signing anchors (keep the private key off the database host)."""
        from ..adapters.store import anchor as anc
        from ..render import console, to_json

        try:
            public = anc.keygen(key, public_key)
        except anc.AnchorError as e:
            fail(str(e))
        if json:
            print(to_json({"ok": True, "key": key, "public_key": public_key, "public_hex": public}))
        else:
            console.print(f"key pair written: {key} (private), {public_key} (public {public[:16]}...)",
                          highlight=False)

    @anchor_app.command("export", epilog=exit_codes())
    @command
    def anchor_export(
        to: Annotated[str, typer.Option("--to", help="The anchor file to append to (one JSON line per anchor).")],
        key: Annotated[str, typer.Option("--key", help="The ed25519 private key (PEM) that signs the anchor.")],
        db: DbOption = None,
        seal: Annotated[bool, typer.Option("--seal", help="Seal the unsealed tail first (writes to the chain).")] = False,
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """Append the digest chain's sealed head (position, digest, time), signed, to an append-only file."""
        from ..adapters.store import anchor as anc
        from ..adapters.store import digest
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            if seal:
                digest.seal(store)
            try:
                anchor = anc.export(store, to, key)
            except anc.AnchorError as e:
                fail(str(e))
        finally:
            store.close()
        if json:
            print(to_json({"ok": True, "anchor": anchor, "to": to}))
        else:
            console.print(f"anchored position {anchor['position']:,} (digest {anchor['digest'][:16]}...) in {to}",
                          highlight=False)

    backup_app = typer.Typer(add_completion=False, invoke_without_command=True,
                             help="Write a backup of the log (full, or an increment of a chain); `backup check` "
                                  "re-verifies stored backups, `backup keygen` makes an encryption key.")
    app.add_typer(backup_app, name="backup")
    register_backup_commands(backup_app)

    @app.command(epilog=exit_codes("a backup file or a link of the chain is damaged or missing (nothing restored)"))
    @command
    def restore(
        from_: Annotated[list[str], typer.Option(
            "--from", help="The backup file to restore; repeat for a chain (the full first, then its increments in "
            "order), or give one directory to restore the newest complete chain in it.")],
        db: DbOption = None,
        force: Annotated[bool, typer.Option("--force", help="Replace a log that is already there (kept aside).")] = False,
        key_file: KeyFileOption = None,
        key_env: KeyEnvOption = None,
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """Verify a backup (or a whole chain) in a staging place, then swap it in; exit 1 if a file or
        link is damaged or missing, 2 if refused."""
        from pathlib import Path

        from ..adapters.store import backup as bk
        from ..projections.tables import drop_read_models
        from ..render import console, to_json

        url = settings(config, db=db).db
        try:
            key = bk.load_key(key_file, key_env)
            paths: Any = from_
            if len(from_) == 1 and Path(from_[0]).expanduser().is_dir():
                paths = bk.find_chain(from_[0], key=key)
            with _progress("verifying the backup", not json) as progress:
                result = bk.restore(url, paths, key=key, force=force, progress=progress, extra_drop=drop_read_models)
        except bk.BackupDamaged as e:
            fail(str(e), ExitCode.PROBLEM)
        except OSError as e:
            fail(str(e))
        if json:
            print(to_json({"ok": True} | result.to_dict()))
            return
        trading = result.logs["ts_events"]
        links = result.manifest.get("sequence", 0) + 1
        console.print(f"[bold green]restored[/] {result.target}: trading log head {trading['head']}, market log head "
                      f"{result.logs['ts_market_events']['head']}; digest chain verified "
                      f"({result.verify['checked_events']} events), last digest {result.last_digest or '-'}"
                      + (f"; a chain of {links} backups" if links > 1 else ""), highlight=False)
        if result.sealed_after_restore:
            console.print(f"  sealed the backup's unsealed tail ({result.sealed_after_restore} events)", highlight=False)
        if result.previous_saved_to:
            console.print(f"  the replaced content is kept in {result.previous_saved_to}", highlight=False)
        console.print("  read models dropped: run `tradestate project` to rebuild them", highlight=False)


KeyFileOption = Annotated[Optional[str], typer.Option(
    "--key-file", help="Encryption key file (32 raw bytes, 64 hex digits or base64; `tradestate backup keygen`). "
    "Never stored with the backup.")]
KeyEnvOption = Annotated[Optional[str], typer.Option(
    "--key-env", help="Name of an environment variable holding the encryption key (hex or base64).")]


def register_backup_commands(backup_app: typer.Typer) -> None:
    """``tradestate backup`` (the group's own command: write a backup), ``backup check`` and
    ``backup keygen``."""

    @backup_app.callback(epilog=exit_codes(extra="the database cannot be reached"))
    @command
    def backup(
        ctx: typer.Context,
        to: Annotated[Optional[str], typer.Option("--to", help="The backup file to write (replaced atomically).")] = None,
        previous: Annotated[Optional[str], typer.Option(
            "--previous", help="The chain's last backup (full or increment): write an increment holding only what "
            "was appended since it (refused if the log no longer continues it).")] = None,
        db: DbOption = None,
        key_file: KeyFileOption = None,
        key_env: KeyEnvOption = None,
        json: JsonOption = False,
        seal: Annotated[bool, typer.Option("--seal/--no-seal", help="Seal the chain's tail first (a write; by "
                                           "default a backup only reads, so it runs on a replica).")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Write a compressed backup of the log (with a manifest: heads, last digest, checksums); with
        --previous an increment of a chain; with a key, encrypted."""
        from ..adapters.store import backup as bk
        from ..render import console, to_json

        if ctx.invoked_subcommand is not None:
            return
        if to is None:
            fail("give the backup file with --to (or a subcommand: check, keygen)")
        key = bk.load_key(key_file, key_env)
        store = open_log(settings(config, db=db).db)
        try:
            manifest = bk.backup(store, to, seal=seal, previous=previous, key=key)
        except bk.BackupDamaged as e:
            fail(f"the previous backup cannot be used: {e}", ExitCode.PROBLEM)
        except OSError as e:
            fail(str(e))
        finally:
            store.close()
        if json:
            print(to_json({"ok": True, "manifest": manifest.to_dict()}))
            return
        trading = manifest.logs["ts_events"]
        chain = manifest.chain["ts_events"]
        what = "backup" if manifest.kind == "full" else f"increment {manifest.sequence}"
        console.print(f"[bold green]{what} written[/]: {manifest.path} ({manifest.size:,} bytes"
                      + (f", encrypted with key {manifest.key_id}" if manifest.encrypted else "") + ")",
                      highlight=False)
        console.print(f"  trading log head {trading['head']} ({trading['rows']} rows"
                      + (f" from {trading['from']}" if manifest.kind != "full" else "") + "), market log head "
                      f"{manifest.logs['ts_market_events']['head']}; sealed up to {chain['sealed_upto']}, "
                      f"last digest {chain['last_digest'] or '-'}, {chain.get('unsealed', 0)} events unsealed (sealed "
                      f"by restore); chain {manifest.chain_id[:12]}", highlight=False)

    @backup_app.command("check", epilog=exit_codes("a backup is damaged, a chain has a bad or missing link, or a "
                                                   "file cannot be read"))
    @command
    def check(
        paths: Annotated[list[str], typer.Argument(help="Backup files and/or directories of backups.")],
        key_file: KeyFileOption = None,
        key_env: KeyEnvOption = None,
        json: JsonOption = False,
        config: ConfigOption = None,  # noqa: ARG001 - every command takes one; check needs no setting
    ) -> None:
        """Re-verify every chain of backups found (checksums, links, encryption); exit 1 if anything is
        damaged or missing."""
        from ..adapters.store import backup as bk
        from ..render import console, to_json

        key = bk.load_key(key_file, key_env)
        report = bk.check_backups(paths, key=key)
        if json:
            print(to_json(report.to_dict() | {"exit_code": 0 if report.ok else 1}))
        else:
            for chain in report.chains:
                links = len(chain["paths"])
                if chain["ok"]:
                    heads = chain["heads"]
                    console.print(f"[bold green]ok[/] chain {chain['chain_id'][:12]}: {links} file(s), "
                                  f"trading head {heads.get('ts_events', 0)}, newest {chain['created_at']}",
                                  highlight=False)
                else:
                    console.print(f"[bold red]DAMAGED[/] chain {chain['chain_id'][:12]} ({links} file(s)): "
                                  f"{chain['problem']}", highlight=False)
            for bad in report.unreadable:
                console.print(f"[bold red]UNREADABLE[/] {bad['path']}: {bad['problem']}", highlight=False)
            if not report.chains and not report.unreadable:
                console.print("[bold red]no backups found[/]", highlight=False)
        raise typer.Exit(ExitCode.OK if report.ok else ExitCode.PROBLEM)

    @backup_app.command("keygen", epilog=exit_codes())
    @command
    def keygen(
        to: Annotated[str, typer.Option("--to", help="Where to write the key (64 hex digits, mode 0600, never "
                                        "overwritten). Keep it away from the backups.")],
        json: JsonOption = False,
        config: ConfigOption = None,  # noqa: ARG001 - every command takes one; keygen needs no setting
    ) -> None:
        """Make a random 256-bit key for encrypting backups (--key-file)."""
        from ..adapters.store import backup_crypto
        from ..render import console, to_json

        kid = backup_crypto.keygen(to)
        if json:
            print(to_json({"ok": True, "key_file": to, "key_id": kid}))
        else:
            console.print(f"backup key written: {to} (key id {kid}); keep a copy apart from the backups",
                          highlight=False)
