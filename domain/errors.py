"""Typed errors of the trading domain.

Every refusal of bad input raises one of these before anything is appended, so a caller can
tell "you asked for something invalid" from "the database failed".
"""

from __future__ import annotations


class TradestateError(Exception):
    """Base class of every error tradestate raises on purpose."""


class InvalidInput(TradestateError, ValueError):
    """A value given to tradestate is malformed (bad quantity, naive timestamp, unknown side...)."""


class UnknownOrder(TradestateError, LookupError):
    """The order named by account and client order id has never been recorded."""

    def __init__(self, account: str, client_order_id: str):
        super().__init__(f"unknown order: account={account!r} client_order_id={client_order_id!r}")
        self.account = account
        self.client_order_id = client_order_id


class IdempotencyConflict(TradestateError):
    """The same idempotency key (client order id, execution id) was used with other content."""


class InvalidTransition(TradestateError):
    """An engine command that the order's lifecycle does not allow (e.g. replace a filled order)."""


class ConcurrencyConflict(TradestateError):
    """Another writer appended to a stream we were writing; the caller may re-decide and retry."""


class AppendFailed(TradestateError):
    """The store could not make the events durable; nothing was appended (or it is unknown)."""


class StoreUnreachable(AppendFailed):
    """The database could not be reached or refused the connection (server down, unknown role or
    database, bad credentials); the message carries the server's own reason. Nothing was read or
    appended."""


class LogRewound(TradestateError):
    """The log went backwards under a running client: its head is below the last position this
    client has seen, or the event at that position is no longer the one it saw (a restore of an
    older backup, an asynchronous failover, a point-in-time recovery). Facts this client
    acknowledged may be gone from the log, so it decides nothing more: every later call of the
    client raises this error again and nothing is appended. Stop sending orders, re-open the
    client, run ``tradestate recover`` and reconcile with every venue, so that fills and
    acknowledgements the log lost are re-established from the venue's records.

    ``known_position``/``known_event_id``: the last event this client had seen; ``found_head``:
    the log's head now; ``found_event_id``: the event now at ``known_position`` (None: none);
    ``lost``: the events this client appended itself and the log no longer holds, oldest first,
    as dicts (position, stream_id, version, type, event_id)."""

    def __init__(self, known_position: int, known_event_id: str | None, found_head: int,
                 found_event_id: str | None, lost: list[dict[str, object]] | None = None):
        self.known_position = known_position
        self.known_event_id = known_event_id
        self.found_head = found_head
        self.found_event_id = found_event_id
        self.lost = list(lost or ())
        if found_head < known_position:
            what = f"its head is now {found_head}, below position {known_position} this client had seen"
        else:
            what = (f"position {known_position} held event {known_event_id} and now holds "
                    f"{found_event_id or 'no event'}")
        super().__init__(
            f"the log went backwards: {what} (a restore, an asynchronous failover or a point-in-time "
            f"recovery); {len(self.lost)} event(s) this client acknowledged are no longer in it. This client "
            "decides nothing more: stop sending orders, re-open, run `tradestate recover` and reconcile "
            "with every venue to re-establish what the log lost"
        )

    def as_dict(self) -> dict[str, object]:
        """What the error carries, as plain data (to keep for ``tradestate recover``)."""
        return {"known_position": self.known_position, "known_event_id": self.known_event_id,
                "found_head": self.found_head, "found_event_id": self.found_event_id,
                "lost": [dict(e) for e in self.lost]}


class CommitOutcomeUnknown(AppendFailed):
    """The append's commit may have happened but could not be confirmed durable where the store is
    configured to make it durable: the connection was lost during the commit, or the wait for the
    synchronous standbys was cut short (cancelled, terminated, or past the append timeout) after
    the primary had committed locally. Until it is resolved the events may exist on the primary
    only, and a failover may lose them: do not act on them (do not send the order). Retrying the
    same call is safe: it answers once the outcome is confirmed, without appending twice."""


class CommitInterrupted(AppendFailed):
    """The connection was lost while the append's commit was under way: it may or may not have
    happened. The writer resolves it by reading its events back and confirming they are durable
    (else ``CommitOutcomeUnknown``); a caller of the store itself must re-read the stream before
    deciding again."""


class NotLeader(TradestateError):
    """The append was refused, atomically with it: it carried ``epoch`` of ``engine_id``'s lease, and
    that epoch is no longer current, or its lease expired or was released (another engine took
    over, or this one stopped renewing: paused, hung or cut off for longer than the lease). Nothing
    was appended, and the engine that got it must not act as the active engine any more: it
    decides nothing more; re-open to take the lease again (which runs the crash recovery) or stay
    a standby. ``reason`` says what the store holds now."""

    def __init__(self, engine_id: str, epoch: int, reason: str):
        self.engine_id = engine_id
        self.epoch = epoch
        self.reason = reason
        super().__init__(f"engine {engine_id!r} epoch {epoch} is no longer the active engine: {reason}; "
                         "nothing was appended (re-open to take the lease again, which recovers first)")


class LeaseHeld(TradestateError):
    """Another live engine holds the lease of ``engine_id`` (it renewed it within the lease
    duration): this process may follow as a standby but must not write."""

    def __init__(self, engine_id: str, holder: str, epoch: int, expires_in: float):
        self.engine_id = engine_id
        self.holder = holder
        self.epoch = epoch
        self.expires_in = expires_in
        super().__init__(f"engine {engine_id!r} is active elsewhere: {holder!r} holds epoch {epoch}, "
                         f"renewed within the lease (expires in {expires_in:.1f} s unless renewed)")


class ReadOnlyStore(StoreUnreachable):
    """The database accepts reads only (a hot standby, or a read-only session default): the log
    cannot be created or appended to here. Read-only opens (``open_store(url, create=False)``)
    work on such a server."""


class AccountOnRecord(TradestateError):
    """A bootstrap from the venue was asked for an account the log already holds events of:
    importing its opening state again would count it twice. Nothing was appended."""

    def __init__(self, account: str, detail: str):
        super().__init__(f"account {account!r} is already on record ({detail}): a bootstrap imports the "
                         "opening state of an account the log does not hold yet; run `tradestate reconcile` instead")
        self.account = account


class VenueIncomplete(TradestateError):
    """The venue's answer could not be used in full (a query failed, a record was refused), so an
    all-or-nothing operation appended nothing."""
