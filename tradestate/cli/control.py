"""``tradestate control ...``: the operator's controls (``tradestate.controls``), each recorded as an
event with the operator's identity (``--operator``, default ``$TRADESTATE_OPERATOR``, else the OS
user@host) and ``--reason``.

Engaging the kill switch and tripping the breaker (they only stop trading) run at once; every
other control asks for confirmation unless ``--yes``, and refuses to run without a terminal to ask
on (a script passes ``--yes``).
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any, Optional

import typer

from .common import ConfigOption, DbOption, ExitCode, choice, command, exit_codes, fail, open_log, settings

control_app = typer.Typer(
    no_args_is_help=True,
    help="Operator controls: kill switch, breaker, resume at a ramp level, limits, discrepancy "
         "acknowledgement, gate approval. Each is an event with who (--operator) and why (--reason).",
)

OperatorOption = Annotated[Optional[str], typer.Option(
    "--operator", help="Who you are, on the event (default: $TRADESTATE_OPERATOR, else user@host).",
    show_default=False)]
ReasonOption = Annotated[Optional[str], typer.Option("--reason", help="Why (required; recorded on the event).",
                                                     show_default=False)]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a "
                                                              "terminal).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the recorded event as JSON (errors too, on stderr).")]
_EPILOG = exit_codes("not confirmed at the prompt (nothing recorded)")


def register(app: typer.Typer) -> None:
    """Add ``control`` to the ``tradestate`` command."""
    app.add_typer(control_app, name="control")


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        fail(f"{question}: needs confirmation and there is no terminal to ask on; pass --yes to confirm")
    if not typer.confirm(f"{question}?", default=False):
        fail("not confirmed: nothing recorded", ExitCode.PROBLEM)


def _run(action: str, question: str, *, db: str | None, config: str | None, operator: str | None,
         reason: str | None, yes: bool, as_json: bool, **params: Any) -> None:
    from ..client import TradestateClient
    from ..controls import PROTECTIVE, default_operator, perform
    from ..render import console, to_json

    s = settings(config, db=db)
    who = operator if operator is not None else default_operator()
    if not who.strip():
        fail("--operator must not be empty")
    if reason is None or not reason.strip():
        fail("--reason is required: every operator action is recorded with who and why")
    if action not in PROTECTIVE and not yes:
        _confirm(question)
    with TradestateClient(open_log(s.db)) as client:
        result = perform(client, action, operator=who, reason=reason, **params)
    if as_json:
        print(to_json({"ok": True, **result.as_dict()}))
    else:
        target = f"gate {result.gate_id}" if action == "approve" else f"account {result.account}"
        already = " (already on record: nothing appended)" if result.duplicate else ""
        console.print(f"recorded {result.event_type} for {target} at position {result.position}{already}, "
                      f"by {result.operator}: {result.reason}", highlight=False, markup=False)
    raise typer.Exit(ExitCode.OK)


@control_app.command("kill-switch", epilog=_EPILOG)
@command
def kill_switch(
    action: Annotated[str, typer.Argument(help="engage or release", **choice("engage", "release", what="action"))],
    account: Annotated[str, typer.Argument(help="The account.")],
    reason: ReasonOption = None, operator: OperatorOption = None, yes: YesOption = False,
    json: JsonFlag = False, db: DbOption = None, config: ConfigOption = None,
) -> None:
    """Engage (every new intent refused) or release the account's kill switch."""
    _run(f"kill-switch.{action}", f"{action} the kill switch of {account}", db=db, config=config,
         operator=operator, reason=reason, yes=yes, as_json=json, account=account)


@control_app.command("breaker", epilog=_EPILOG)
@command
def breaker(
    action: Annotated[str, typer.Argument(help="trip or reset", **choice("trip", "reset", what="action"))],
    account: Annotated[str, typer.Argument(help="The account.")],
    until: Annotated[Optional[str], typer.Option("--until", help="trip: until this ISO-8601 time (default: "
                                                                 "until reset).")] = None,
    reason: ReasonOption = None, operator: OperatorOption = None, yes: YesOption = False,
    json: JsonFlag = False, db: DbOption = None, config: ConfigOption = None,
) -> None:
    """Trip (intents refused until reset or --until) or reset the account's circuit breaker."""
    params: dict[str, Any] = {}
    if until is not None:
        if action != "trip":
            fail("--until goes with trip")
        try:
            params["until"] = datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError:
            fail(f"--until is not an ISO-8601 time: {until!r}")
        if params["until"].tzinfo is None:
            fail("--until needs a time zone (e.g. 2026-11-20T14:31:05Z)")
    _run(f"breaker.{action}", f"{action} the circuit breaker of {account}", db=db, config=config,
         operator=operator, reason=reason, yes=yes, as_json=json, account=account, **params)


@control_app.command("resume", epilog=_EPILOG)
@command
def resume(
    account: Annotated[str, typer.Argument(help="The account.")],
    ramp: Annotated[str, typer.Option("--ramp", help="Percent of the limits to trade at.",
                                      **choice("50", "75", "100", what="--ramp"))] = "50",
    reason: ReasonOption = None, operator: OperatorOption = None, yes: YesOption = False,
    json: JsonFlag = False, db: DbOption = None, config: ConfigOption = None,
) -> None:
    """Resume trading on the account at a ramp level: its limits apply at 50, 75 or 100 %."""
    _run("resume", f"resume trading on {account} at {ramp} % of its limits", db=db, config=config,
         operator=operator, reason=reason, yes=yes, as_json=json, account=account, ramp_pct=int(ramp))


@control_app.command("limit", epilog=_EPILOG)
@command
def limit(
    account: Annotated[str, typer.Argument(help="The account.")],
    name: Annotated[str, typer.Argument(help="max_order_qty, max_order_notional, max_position_qty, "
                                             "max_open_orders, max_daily_trades or max_daily_loss.")],
    value: Annotated[str, typer.Argument(help="The new value (a decimal), or 'none' to remove the limit.")],
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="max_position_qty of one symbol.")] = None,
    reason: ReasonOption = None, operator: OperatorOption = None, yes: YesOption = False,
    json: JsonFlag = False, db: DbOption = None, config: ConfigOption = None,
) -> None:
    """Set (or with 'none' remove) one pre-trade limit of the account."""
    new = None if value.strip().lower() == "none" else value
    shown = "remove" if new is None else f"set to {new}"
    _run("limit", f"{name}{' of ' + symbol if symbol else ''} on {account}: {shown}", db=db, config=config,
         operator=operator, reason=reason, yes=yes, as_json=json, account=account, limit=name, value=new,
         symbol=symbol)


@control_app.command("ack", epilog=_EPILOG)
@command
def ack(
    account: Annotated[str, typer.Argument(help="The account whose trading the discrepancies blocked.")],
    reason: ReasonOption = None, operator: OperatorOption = None, yes: YesOption = False,
    json: JsonFlag = False, db: DbOption = None, config: ConfigOption = None,
) -> None:
    """Acknowledge the discrepancies that blocked the account (--reason: what was decided); unblocks it."""
    _run("ack", f"acknowledge the discrepancies of {account} and unblock its trading", db=db, config=config,
         operator=operator, reason=reason, yes=yes, as_json=json, account=account)


@control_app.command("approve", epilog=_EPILOG)
@command
def approve(
    gate_id: Annotated[str, typer.Argument(help="The safety gate waiting for an operator's approval.")],
    account: Annotated[Optional[str], typer.Option("--account", help="The account the gate holds, if one.")] = None,
    reason: ReasonOption = None, operator: OperatorOption = None, yes: YesOption = False,
    json: JsonFlag = False, db: DbOption = None, config: ConfigOption = None,
) -> None:
    """Approve a safety gate, letting what it held back go on."""
    _run("approve", f"approve gate {gate_id}", db=db, config=config, operator=operator, reason=reason, yes=yes,
         as_json=json, account=account, gate_id=gate_id)
