"""The auction rules: a sans-I/O state machine that never reads a clock.

How this works
--------------
An :class:`Auction` runs one lot at a time.  Commands (``PlaceBid``,
``OpenLot``...) go in through :meth:`Auction.handle` together with the
server's current time; a :class:`Decision` comes out: accepted with the
events it caused, or rejected with a reason code from docs/protocol.md.

Every state change is an event, and :meth:`Auction.apply` is the only method
that mutates state.  ``handle``, ``tick`` and ``recover`` validate, build
events numbered ``last_seq + 1, + 2, ...`` and pass them to ``apply``.  So
replaying the journal through ``apply`` rebuilds exactly the state the live
server had, and a rejected command cannot have changed anything.

The lot lifecycle (``None`` means no lot has been opened yet):

    state    event          next state
    -------  -------------  ----------
    None     lot_opened     OPEN
    CLOSED   lot_opened     OPEN
    OPEN     bid            OPEN
    OPEN     lot_extended   OPEN
    OPEN     lot_paused     PAUSED
    PAUSED   lot_resumed    OPEN
    OPEN     lot_closed     CLOSED
    PAUSED   lot_closed     CLOSED

Any other pairing is impossible, and ``apply`` raises ``ValueError`` for it.
``increment_changed``, ``chat`` and ``host_changed`` leave the state alone.

Time: the server owns the clock.  The lot clock calls ``tick(now_ms)`` when
``deadline_ms()`` passes, and the service calls ``tick(now_ms)`` before every
``handle(command, now_ms)`` with the same ``now_ms``, journaling whatever
``tick`` returns.  ``handle`` itself never closes a lot, because a rejected
command must change nothing.  Should the service forget to tick, an OPEN lot
past its deadline is still treated as ended: bids, pause, close and increment
changes on it are rejected with ``lot_closed`` and ``open`` with ``lot_open``,
until ``tick`` closes it.  A lot that closes at its deadline is stamped with
the deadline (``at_ms == ends_at_ms``), not with the moment the tick ran.
"""

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, fields, replace
from typing import Any, get_args, get_type_hints

from bidwar.money import MAX_CENTS, format_cents, parse_amount

MS_PER_S = 1000
MAX_EXTENSION_S = 3600


class LotState(enum.Enum):
    OPEN = "open"
    PAUSED = "paused"
    CLOSED = "closed"


@dataclass(frozen=True)
class Rules:
    """Limits and defaults of one auction; durations in seconds, money in cents."""

    default_increment_cents: int = 100
    default_extension_s: int = 10
    max_duration_s: int = 86400
    max_title_chars: int = 200
    chat_history: int = 50
    chats_remembered: int = 10_000  # for answering retried chat requests
    results_history: int = 20
    max_chat_chars: int = 500

    def __post_init__(self) -> None:
        for name in ("default_increment_cents", "default_extension_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Rules.{name} must be positive")
        if self.default_extension_s > MAX_EXTENSION_S:
            raise ValueError(f"Rules.default_extension_s must be ≤ {MAX_EXTENSION_S}")


DEFAULT_RULES = Rules()


# --- Commands ---------------------------------------------------------------
#
# ``actor`` is the already-authenticated bidder name and ``request_id`` the
# client's request id.  The protocol layer has checked types and sizes; the
# core checks the values again because a bug there must not corrupt a lot.


@dataclass(frozen=True, slots=True)
class ClaimHost:
    """Become the host; the service has already checked the host key."""

    actor: str
    request_id: str


@dataclass(frozen=True, slots=True)
class ReleaseHost:
    """Stop being the host; the service also sends it when the host disconnects."""

    actor: str
    request_id: str


@dataclass(frozen=True, slots=True)
class OpenLot:
    actor: str
    request_id: str
    title: str
    starting_price_cents: int
    duration_s: int
    increment_cents: int | None = None
    sudden_death: bool = False
    extension_s: int | None = None


@dataclass(frozen=True, slots=True)
class CloseLot:
    actor: str
    request_id: str


@dataclass(frozen=True, slots=True)
class PauseLot:
    actor: str
    request_id: str


@dataclass(frozen=True, slots=True)
class ResumeLot:
    actor: str
    request_id: str


@dataclass(frozen=True, slots=True)
class SetIncrement:
    actor: str
    request_id: str
    increment_cents: int


@dataclass(frozen=True, slots=True)
class PlaceBid:
    actor: str
    request_id: str
    amount_cents: int
    lot: int | None = None


@dataclass(frozen=True, slots=True)
class PostChat:
    actor: str
    request_id: str
    text: str


Command = (
    ClaimHost
    | ReleaseHost
    | OpenLot
    | CloseLot
    | PauseLot
    | ResumeLot
    | SetIncrement
    | PlaceBid
    | PostChat
)


# --- Events -----------------------------------------------------------------
#
# One class per row of docs/protocol.md's Events table.  A field named
# ``x_cents`` travels as the decimal string ``x``; every other field travels
# under its own name.  ``event_to_dict`` relies on that naming rule.


@dataclass(frozen=True, slots=True)
class LotOpened:
    seq: int
    at_ms: int
    lot: int
    title: str
    starting_price_cents: int
    increment_cents: int
    ends_at_ms: int
    extension_s: int
    sudden_death: bool


@dataclass(frozen=True, slots=True)
class BidPlaced:
    """An accepted bid; ``ends_at_ms`` is the deadline once the bid is taken,
    already including the soft-close extension it caused (if any)."""

    seq: int
    at_ms: int
    lot: int
    bidder: str
    amount_cents: int
    ends_at_ms: int
    bid_count: int
    request_id: str


@dataclass(frozen=True, slots=True)
class LotExtended:
    seq: int
    at_ms: int
    lot: int
    ends_at_ms: int


@dataclass(frozen=True, slots=True)
class LotPaused:
    seq: int
    at_ms: int
    lot: int
    remaining_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class LotResumed:
    seq: int
    at_ms: int
    lot: int
    ends_at_ms: int


@dataclass(frozen=True, slots=True)
class IncrementChanged:
    """``lot`` is None when no lot was OPEN or PAUSED: only the default changed."""

    seq: int
    at_ms: int
    lot: int | None
    increment_cents: int


@dataclass(frozen=True, slots=True)
class LotClosed:
    seq: int
    at_ms: int
    lot: int
    outcome: str
    winner: str | None
    price_cents: int | None
    bid_count: int


@dataclass(frozen=True, slots=True)
class ChatPosted:
    seq: int
    at_ms: int
    author: str
    text: str
    request_id: str


@dataclass(frozen=True, slots=True)
class HostChanged:
    seq: int
    at_ms: int
    host: str | None


Event = (
    LotOpened
    | BidPlaced
    | LotExtended
    | LotPaused
    | LotResumed
    | IncrementChanged
    | LotClosed
    | ChatPosted
    | HostChanged
)

EVENT_TYPES: dict[str, type] = {
    "lot_opened": LotOpened,
    "bid": BidPlaced,
    "lot_extended": LotExtended,
    "lot_paused": LotPaused,
    "lot_resumed": LotResumed,
    "increment_changed": IncrementChanged,
    "lot_closed": LotClosed,
    "chat": ChatPosted,
    "host_changed": HostChanged,
}
_TYPE_NAMES = {cls: name for name, cls in EVENT_TYPES.items()}

# Fields whose values are a closed set of words on the wire.
_CHOICES = {
    "outcome": frozenset({"sold", "passed"}),
    "reason": frozenset({"host", "recovered"}),
}


def _wire_name(field_name: str) -> str:
    return field_name.removesuffix("_cents")


def _schema(cls: type) -> dict[str, tuple[str, tuple[type, ...]]]:
    """Map each wire name of ``cls`` to its attribute and allowed Python types."""
    hints = get_type_hints(cls)
    return {
        _wire_name(f.name): (f.name, get_args(hints[f.name]) or (hints[f.name],))
        for f in fields(cls)
    }


# Built once: replaying a long journal parses every record through these.
_SCHEMAS = {name: _schema(cls) for name, cls in EVENT_TYPES.items()}


def event_to_dict(event: Event) -> dict[str, Any]:
    """Return ``event`` in the wire and journal shape of docs/protocol.md."""
    name = _TYPE_NAMES.get(type(event))
    if name is None:
        raise TypeError(f"not an auction event: {event!r}")

    data: dict[str, Any] = {"type": name}
    for field in fields(event):
        value = getattr(event, field.name)
        if field.name.endswith("_cents") and value is not None:
            value = format_cents(value)
        data[_wire_name(field.name)] = value
    return data


def event_from_dict(data: Any) -> Event:
    """Return the event ``data`` describes; the inverse of :func:`event_to_dict`.

    Raises ``ValueError`` naming the problem when ``data`` is not an object,
    has an unknown type, a missing, extra or mistyped field, a malformed
    amount or a value outside its set.  It does not judge whether the event
    is possible in some auction: that is :meth:`Auction.apply`'s job.
    """
    if not isinstance(data, dict):
        raise ValueError("an event must be a JSON object")
    name = data.get("type")
    cls = EVENT_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown event type {name!r}")

    schema = _SCHEMAS[name]
    _check_keys(name, set(data) - {"type"}, set(schema))

    values = {
        attr: _value_from_wire(f"{name}.{wire}", attr, data[wire], allowed)
        for wire, (attr, allowed) in schema.items()
    }
    return cls(**values)


def _check_keys(name: str, given: set[str], expected: set[str]) -> None:
    if missing := expected - given:
        raise ValueError(f"{name} event is missing {', '.join(sorted(missing))}")
    if extra := given - expected:
        raise ValueError(f"{name} event has unknown {', '.join(sorted(extra))}")


def _value_from_wire(
    where: str, attr: str, value: Any, allowed: tuple[type, ...]
) -> Any:
    """Check one field's JSON value against its annotation and convert money.

    ``where`` names the field for error messages ("bid.amount").
    """
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"{where} may not be null")

    if attr.endswith("_cents"):
        try:
            return parse_amount(value)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    # Exact type match: JSON true must not pass for 1, nor 1 for true.
    if type(value) not in allowed:
        raise ValueError(f"{where} has the wrong type")
    if attr in _CHOICES and value not in _CHOICES[attr]:
        raise ValueError(f"{where} may not be {value!r}")
    if attr in ("seq", "lot") and value < 1:
        raise ValueError(f"{where} must be at least 1")
    return value


# --- Lot and decisions --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lot:
    """A read-only view of the current (or last) lot.

    ``ends_at_ms`` is the deadline while OPEN, None while PAUSED (then
    ``remaining_ms`` holds the time left) and the moment it ended once CLOSED.
    """

    number: int
    title: str
    state: LotState
    starting_price_cents: int
    increment_cents: int
    extension_s: int
    sudden_death: bool
    ends_at_ms: int | None
    price_cents: int | None = None
    leader: str | None = None
    bid_count: int = 0
    remaining_ms: int | None = None
    outcome: str | None = None

    @property
    def minimum_bid_cents(self) -> int:
        """The lowest bid that would be accepted now (ignoring the clock)."""
        if self.price_cents is None:
            return self.starting_price_cents
        return self.price_cents + self.increment_cents

    def is_over(self, now_ms: int) -> bool:
        """True when the lot takes no more bids: CLOSED, or OPEN past its deadline."""
        if self.state is LotState.OPEN:
            assert self.ends_at_ms is not None
            return now_ms >= self.ends_at_ms
        return self.state is LotState.CLOSED

    def to_dict(self) -> dict[str, Any]:
        """The ``lot`` object of docs/protocol.md's snapshot notice."""
        data: dict[str, Any] = {
            "lot": self.number,
            "title": self.title,
            "state": self.state.value,
            "starting_price": format_cents(self.starting_price_cents),
            "increment": format_cents(self.increment_cents),
            "price": _format_optional(self.price_cents),
            "leader": self.leader,
            "bid_count": self.bid_count,
            "ends_at_ms": self.ends_at_ms,
            "extension_s": self.extension_s,
            "sudden_death": self.sudden_death,
        }
        if self.state is LotState.PAUSED:
            data["remaining_ms"] = self.remaining_ms
        if self.state is LotState.CLOSED:
            data["outcome"] = self.outcome
        return data


def _format_optional(cents: int | None) -> str | None:
    return None if cents is None else format_cents(cents)


@dataclass(frozen=True)
class Decision:
    """The answer to one command.

    When accepted, ``events`` are already applied and ``result`` is the reply
    payload; when it has a ``seq`` that is the seq of the command's main event
    (the first one).  When rejected, ``events`` is empty, ``result`` is ``{}``
    and ``reason`` is a reason code from docs/protocol.md.
    """

    accepted: bool
    reason: str | None
    message: str
    events: tuple[Event, ...]
    result: dict[str, Any]
    outbid: str | None = None


def _reject(reason: str, message: str) -> Decision:
    return Decision(False, reason, message, (), {})


_LOT_TRANSITIONS: dict[tuple[LotState | None, type], LotState] = {
    (None, LotOpened): LotState.OPEN,
    (LotState.CLOSED, LotOpened): LotState.OPEN,
    (LotState.OPEN, BidPlaced): LotState.OPEN,
    (LotState.OPEN, LotExtended): LotState.OPEN,
    (LotState.OPEN, LotPaused): LotState.PAUSED,
    (LotState.PAUSED, LotResumed): LotState.OPEN,
    (LotState.OPEN, LotClosed): LotState.CLOSED,
    (LotState.PAUSED, LotClosed): LotState.CLOSED,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_cents(value: Any, what: str) -> Decision | None:
    if not _is_int(value) or not 0 < value <= MAX_CENTS:
        return _reject(
            "invalid_amount",
            f"{what} must be more than zero and at most {format_cents(MAX_CENTS)}",
        )
    return None


def _closing_event(lot: Lot, seq: int, at_ms: int) -> LotClosed:
    """The event that ends ``lot``: sold to the leader, or passed without bids."""
    return LotClosed(
        seq=seq,
        at_ms=at_ms,
        lot=lot.number,
        outcome="passed" if lot.leader is None else "sold",
        winner=lot.leader,
        price_cents=lot.price_cents,
        bid_count=lot.bid_count,
    )


def _deadline_after_bid(lot: Lot, at_ms: int) -> int:
    """Soft close: a bid with less than ``extension_s`` left pushes the end out."""
    assert lot.ends_at_ms is not None
    window_ms = lot.extension_s * MS_PER_S
    if lot.sudden_death or lot.ends_at_ms - at_ms >= window_ms:
        return lot.ends_at_ms
    return at_ms + window_ms


# --- The auction ----------------------------------------------------------------


class Auction:
    """The rules of one auction room, applied one command at a time.

    Not thread-safe and not re-entrant: the server gives each auction one
    writer, and that writer's order is the journal's order.
    """

    def __init__(self, rules: Rules = DEFAULT_RULES, last_seq: int = 0) -> None:
        self.rules = rules
        self._last_seq = last_seq
        self._host: str | None = None
        self._lot: Lot | None = None
        self._default_increment_cents = rules.default_increment_cents
        self._chat: deque[ChatPosted] = deque(maxlen=rules.chat_history)
        self._results: deque[LotClosed] = deque(maxlen=rules.results_history)

        # Names that ever bid or chatted, kept for the auction's whole life
        # because a name stays reserved once used (docs/protocol.md, hello).
        self._participants: set[str] = set()
        # Recent chat messages by (author, request id), so that a retry after
        # a restart is answered instead of posted twice.  Bounded: a retry
        # comes within seconds, not after thousands of messages.
        self._chats_by_request: OrderedDict[tuple[str, str], ChatPosted] = OrderedDict()

        # Accepted bids by (bidder, request id), for the current and the
        # previous lot only: older lots are dropped when a lot opens, so this
        # holds at most two lots' worth of accepted bids.
        self._bids_by_request: dict[int, dict[tuple[str, str], BidPlaced]] = {}

    @property
    def last_seq(self) -> int:
        """The seq of the last event applied (0 before any)."""
        return self._last_seq

    @property
    def host(self) -> str | None:
        return self._host

    @property
    def lot(self) -> Lot | None:
        """The current lot, or the last one once closed; None before the first."""
        return self._lot

    @property
    def default_increment_cents(self) -> int:
        """The increment a lot opened without one gets."""
        return self._default_increment_cents

    # --- Commands ---

    def handle(self, command: Command, now_ms: int) -> Decision:
        """Judge ``command`` at server time ``now_ms``.

        Accepted: the events are built, applied and returned in the Decision,
        for the caller to journal before acknowledging.  Rejected: nothing
        changed at all.  Call :meth:`tick` with the same ``now_ms`` first.
        """
        handler = self._HANDLERS.get(type(command))
        if handler is None:
            raise TypeError(f"not an auction command: {command!r}")
        return handler(self, command, now_ms)

    def _claim_host(self, command: ClaimHost, now_ms: int) -> Decision:
        actor = command.actor
        if self._host == actor:
            return Decision(True, None, "you are already the host", (), {"host": actor})
        if self._host is not None:
            return _reject("host_taken", f"{self._host} is the host")

        event = HostChanged(self._last_seq + 1, now_ms, actor)
        return self._commit((event,), f"{actor} is now the host", {"host": actor})

    def _release_host(self, command: ReleaseHost, now_ms: int) -> Decision:
        if rejection := self._check_host(command):
            return rejection

        event = HostChanged(self._last_seq + 1, now_ms, None)
        return self._commit((event,), "you are no longer the host", {"host": None})

    def _open_lot(self, command: OpenLot, now_ms: int) -> Decision:
        rejection = (
            self._check_host(command)
            or self._check_open_request(command)
            or self._check_can_open()
        )
        if rejection:
            return rejection

        number = 1 if self._lot is None else self._lot.number + 1
        event = LotOpened(
            seq=self._last_seq + 1,
            at_ms=now_ms,
            lot=number,
            title=command.title,
            starting_price_cents=command.starting_price_cents,
            increment_cents=_default(
                command.increment_cents, self._default_increment_cents
            ),
            ends_at_ms=now_ms + command.duration_s * MS_PER_S,
            extension_s=_default(command.extension_s, self.rules.default_extension_s),
            sudden_death=command.sudden_death,
        )
        result = {"lot": number, "ends_at_ms": event.ends_at_ms}
        return self._commit((event,), f"lot {number} is open", result)

    def _check_open_request(self, command: OpenLot) -> Decision | None:
        rules = self.rules
        title, duration_s = command.title, command.duration_s
        extension_s = command.extension_s
        if not isinstance(title, str) or not 1 <= len(title) <= rules.max_title_chars:
            return _reject(
                "invalid_request",
                f"a title has 1 to {rules.max_title_chars} characters",
            )
        if not _is_int(duration_s) or not 1 <= duration_s <= rules.max_duration_s:
            return _reject(
                "invalid_request",
                f"duration_s must be 1 to {rules.max_duration_s}",
            )
        if extension_s is not None and (
            not _is_int(extension_s) or not 1 <= extension_s <= MAX_EXTENSION_S
        ):
            return _reject(
                "invalid_request", f"extension_s must be 1 to {MAX_EXTENSION_S}"
            )
        if not isinstance(command.sudden_death, bool):
            return _reject("invalid_request", "sudden_death must be true or false")

        return _check_cents(command.starting_price_cents, "the starting price") or (
            None
            if command.increment_cents is None
            else _check_cents(command.increment_cents, "the increment")
        )

    def _check_can_open(self) -> Decision | None:
        lot = self._lot
        if lot is not None and lot.state is not LotState.CLOSED:
            return _reject("lot_open", f"lot {lot.number} is not closed yet")
        return None

    def _close_lot(self, command: CloseLot, now_ms: int) -> Decision:
        rejection = self._check_host(command) or self._check_running(now_ms)
        if rejection:
            return rejection

        assert self._lot is not None
        event = _closing_event(self._lot, self._last_seq + 1, now_ms)
        result = {
            "lot": event.lot,
            "outcome": event.outcome,
            "winner": event.winner,
            "price": _format_optional(event.price_cents),
        }
        return self._commit((event,), f"lot {event.lot} {event.outcome}", result)

    def _pause_lot(self, command: PauseLot, now_ms: int) -> Decision:
        rejection = self._check_host(command) or self._check_running(now_ms)
        if rejection:
            return rejection

        lot = self._lot
        assert lot is not None
        if lot.state is LotState.PAUSED:
            return _reject("lot_paused", f"lot {lot.number} is already paused")

        assert lot.ends_at_ms is not None
        remaining_ms = lot.ends_at_ms - now_ms
        event = LotPaused(self._last_seq + 1, now_ms, lot.number, remaining_ms, "host")
        result = {"lot": lot.number, "remaining_ms": remaining_ms}
        return self._commit((event,), f"lot {lot.number} is paused", result)

    def _resume_lot(self, command: ResumeLot, now_ms: int) -> Decision:
        if rejection := self._check_host(command):
            return rejection

        lot = self._lot
        if lot is None or lot.state is not LotState.PAUSED:
            return _reject("not_paused", "no lot is paused")

        assert lot.remaining_ms is not None
        ends_at_ms = now_ms + lot.remaining_ms
        event = LotResumed(self._last_seq + 1, now_ms, lot.number, ends_at_ms)
        result = {"lot": lot.number, "ends_at_ms": ends_at_ms}
        return self._commit((event,), f"lot {lot.number} is running again", result)

    def _set_increment(self, command: SetIncrement, now_ms: int) -> Decision:
        rejection = self._check_host(command) or _check_cents(
            command.increment_cents, "the increment"
        )
        if rejection:
            return rejection

        # With no lot running only the default for later lots changes.
        lot = self._lot
        number = None
        if lot is not None and lot.state is not LotState.CLOSED:
            if rejection := self._check_running(now_ms):
                return rejection
            number = lot.number

        amount = command.increment_cents
        event = IncrementChanged(self._last_seq + 1, now_ms, number, amount)
        result = {"lot": number, "increment": format_cents(amount)}
        return self._commit((event,), f"increment is {format_cents(amount)}", result)

    def _place_bid(self, command: PlaceBid, now_ms: int) -> Decision:
        rejection = (
            _check_cents(command.amount_cents, "a bid")
            or self._check_biddable(command, now_ms)
            or self._check_bidder(command)
        )
        if rejection:
            return rejection

        lot = self._lot
        assert lot is not None and lot.ends_at_ms is not None
        amount = command.amount_cents
        if amount < lot.minimum_bid_cents:
            return _reject(
                "bid_too_low", f"bid at least {format_cents(lot.minimum_bid_cents)}"
            )

        events = self._bid_events(lot, command, now_ms)
        result = {"lot": lot.number, "amount": format_cents(amount)}
        message = f"you lead lot {lot.number} at {format_cents(amount)}"
        return self._commit(events, message, result, outbid=lot.leader)

    def _check_biddable(self, command: PlaceBid, now_ms: int) -> Decision | None:
        lot = self._lot
        if lot is None:
            return _reject("no_lot", "no lot has been opened yet")
        if command.lot is not None and not _is_int(command.lot):
            return _reject("invalid_request", "lot must be a lot number")
        if command.lot is not None and command.lot != lot.number:
            return _reject(
                "wrong_lot", f"lot {command.lot} is not the current lot ({lot.number})"
            )
        if lot.state is LotState.PAUSED:
            return _reject("lot_paused", f"lot {lot.number} is paused")
        if lot.is_over(now_ms):
            return _reject("lot_closed", f"lot {lot.number} has ended")
        return None

    def _check_bidder(self, command: PlaceBid) -> Decision | None:
        lot = self._lot
        assert lot is not None

        # The seller's side may not push its own price up (shill bidding).
        if command.actor == self._host:
            return _reject("not_allowed", "the host may not bid")
        if command.actor == lot.leader:
            return _reject("already_leading", "you are already the highest bidder")
        return None

    def _bid_events(
        self, lot: Lot, command: PlaceBid, now_ms: int
    ) -> tuple[Event, ...]:
        """The accepted bid, then a lot_extended when it triggered soft close."""
        seq = self._last_seq + 1
        ends_at_ms = _deadline_after_bid(lot, now_ms)
        bid = BidPlaced(
            seq=seq,
            at_ms=now_ms,
            lot=lot.number,
            bidder=command.actor,
            amount_cents=command.amount_cents,
            ends_at_ms=ends_at_ms,
            bid_count=lot.bid_count + 1,
            request_id=command.request_id,
        )
        if ends_at_ms == lot.ends_at_ms:
            return (bid,)
        return (bid, LotExtended(seq + 1, now_ms, lot.number, ends_at_ms))

    def _post_chat(self, command: PostChat, now_ms: int) -> Decision:
        text, limit = command.text, self.rules.max_chat_chars
        if not isinstance(text, str) or not 1 <= len(text) <= limit:
            return _reject("invalid_text", f"a message has 1 to {limit} characters")

        event = ChatPosted(
            self._last_seq + 1, now_ms, command.actor, text, command.request_id
        )
        return self._commit((event,), "message posted", {})

    def _check_host(self, command: Command) -> Decision | None:
        if command.actor != self._host:
            return _reject("not_host", "only the host may do that")
        return None

    def _check_running(self, now_ms: int) -> Decision | None:
        """Reject unless a lot is OPEN (and before its deadline) or PAUSED."""
        lot = self._lot
        if lot is None:
            return _reject("no_lot", "no lot has been opened yet")
        if lot.is_over(now_ms):
            return _reject("lot_closed", f"lot {lot.number} has ended")
        return None

    def _commit(
        self,
        events: tuple[Event, ...],
        message: str,
        result: dict[str, Any],
        outbid: str | None = None,
    ) -> Decision:
        for event in events:
            self.apply(event)
        return Decision(
            True, None, message, events, {**result, "seq": events[0].seq}, outbid
        )

    _HANDLERS: dict[type, Any] = {
        ClaimHost: _claim_host,
        ReleaseHost: _release_host,
        OpenLot: _open_lot,
        CloseLot: _close_lot,
        PauseLot: _pause_lot,
        ResumeLot: _resume_lot,
        SetIncrement: _set_increment,
        PlaceBid: _place_bid,
        PostChat: _post_chat,
    }

    # --- Time ---

    def tick(self, now_ms: int) -> tuple[Event, ...]:
        """Close the OPEN lot if its deadline is at or before ``now_ms``.

        The close is stamped with the deadline, when the lot really ended.
        Returns the applied events (empty when nothing was due).
        """
        lot = self._lot
        if lot is None or not (lot.state is LotState.OPEN and lot.is_over(now_ms)):
            return ()

        assert lot.ends_at_ms is not None
        event = _closing_event(lot, self._last_seq + 1, lot.ends_at_ms)
        self.apply(event)
        return (event,)

    def deadline_ms(self) -> int | None:
        """When :meth:`tick` next has work: the OPEN lot's end, else None."""
        if self._lot is None or self._lot.state is not LotState.OPEN:
            return None
        return self._lot.ends_at_ms

    def recover(self, now_ms: int, last_record_at_ms: int) -> tuple[Event, ...]:
        """Settle the state after replaying the journal at start-up.

        An OPEN lot is paused (reason ``recovered``) with the time it had left
        when the last record was written, or closed at its deadline if the
        server was alive past it; the host is released, since no connection
        survived.  Returns the applied events, for the caller to journal.
        """
        events: list[Event] = []
        lot = self._lot
        if lot is not None and lot.state is LotState.OPEN:
            assert lot.ends_at_ms is not None
            remaining_ms = lot.ends_at_ms - last_record_at_ms
            if remaining_ms <= 0:
                event: Event = _closing_event(lot, self._last_seq + 1, lot.ends_at_ms)
            else:
                event = LotPaused(
                    self._last_seq + 1, now_ms, lot.number, remaining_ms, "recovered"
                )
            self.apply(event)
            events.append(event)

        if self._host is not None:
            event = HostChanged(self._last_seq + 1, now_ms, None)
            self.apply(event)
            events.append(event)
        return tuple(events)

    # --- Replay ---

    def apply(self, event: Event) -> None:
        """Apply one event, live or replayed from the journal.

        Raises ``ValueError`` and changes nothing if ``event.seq`` is not
        ``last_seq + 1`` or the event is impossible in the current state.
        """
        applier = self._APPLIERS.get(type(event))
        if applier is None:
            raise TypeError(f"not an auction event: {event!r}")
        if event.seq != self._last_seq + 1:
            raise ValueError(f"event seq {event.seq} does not follow {self._last_seq}")

        applier(self, event)
        self._last_seq = event.seq

    def _advance(self, event: Event) -> LotState:
        """Check a lot event against the transition table and the lot number;
        return the state the lot moves to."""
        state = None if self._lot is None else self._lot.state
        next_state = _LOT_TRANSITIONS.get((state, type(event)))
        name = _TYPE_NAMES[type(event)]
        if next_state is None:
            shown = "no lot" if state is None else f"a {state.value} lot"
            raise ValueError(f"{name} is impossible with {shown}")

        expected = self._expected_lot_number(event)
        if event.lot != expected:  # type: ignore[union-attr]
            raise ValueError(f"{name} is not for lot {expected}")
        return next_state

    def _expected_lot_number(self, event: Event) -> int:
        if self._lot is None:
            return 1
        if isinstance(event, LotOpened):
            return self._lot.number + 1
        return self._lot.number

    def _apply_lot_opened(self, event: LotOpened) -> None:
        state = self._advance(event)
        _require(event.ends_at_ms > event.at_ms, "lot_opened ends before it starts")

        self._lot = Lot(
            number=event.lot,
            title=event.title,
            state=state,
            starting_price_cents=event.starting_price_cents,
            increment_cents=event.increment_cents,
            extension_s=event.extension_s,
            sudden_death=event.sudden_death,
            ends_at_ms=event.ends_at_ms,
        )

        # Keep request ids of the previous lot only (see __init__).
        previous = self._bids_by_request.get(event.lot - 1, {})
        self._bids_by_request = {event.lot - 1: previous, event.lot: {}}

    def _apply_bid(self, event: BidPlaced) -> None:
        state = self._advance(event)
        lot = self._lot
        assert lot is not None and lot.ends_at_ms is not None
        _require(event.bidder != lot.leader, "the leader cannot bid again")
        _require(event.bidder != self._host, "the host cannot bid")
        _require(event.amount_cents >= lot.minimum_bid_cents, "bid below the minimum")
        _require(event.at_ms < lot.ends_at_ms, "bid after the lot's deadline")
        _require(event.bid_count == lot.bid_count + 1, "bid_count skips")
        _require(
            event.ends_at_ms == _deadline_after_bid(lot, event.at_ms),
            "bid carries a deadline the soft-close rule would not give",
        )

        self._lot = replace(
            lot,
            state=state,
            price_cents=event.amount_cents,
            leader=event.bidder,
            bid_count=event.bid_count,
            ends_at_ms=event.ends_at_ms,
        )
        self._participants.add(event.bidder)
        key = (event.bidder, event.request_id)
        self._bids_by_request.setdefault(event.lot, {})[key] = event

    def _apply_lot_extended(self, event: LotExtended) -> None:
        self._advance(event)
        lot = self._lot
        assert lot is not None and lot.ends_at_ms is not None
        _require(not lot.sudden_death, "a sudden-death lot is never extended")
        _require(event.ends_at_ms >= lot.ends_at_ms, "an extension cannot shorten")

        self._lot = replace(lot, ends_at_ms=event.ends_at_ms)

    def _apply_lot_paused(self, event: LotPaused) -> None:
        state = self._advance(event)
        lot = self._lot
        assert lot is not None and lot.ends_at_ms is not None
        _require(event.remaining_ms > 0, "a paused lot must have time left")

        # A recovered pause was computed from the last record, not at_ms.
        if event.reason == "host":
            _require(
                event.remaining_ms == lot.ends_at_ms - event.at_ms,
                "remaining_ms does not match the deadline",
            )

        self._lot = replace(
            lot, state=state, ends_at_ms=None, remaining_ms=event.remaining_ms
        )

    def _apply_lot_resumed(self, event: LotResumed) -> None:
        state = self._advance(event)
        lot = self._lot
        assert lot is not None and lot.remaining_ms is not None
        _require(
            event.ends_at_ms == event.at_ms + lot.remaining_ms,
            "the resumed deadline does not match the time that was left",
        )

        self._lot = replace(
            lot, state=state, ends_at_ms=event.ends_at_ms, remaining_ms=None
        )

    def _apply_lot_closed(self, event: LotClosed) -> None:
        state = self._advance(event)
        lot = self._lot
        assert lot is not None
        _require(
            event == _closing_event(lot, event.seq, event.at_ms),
            "lot_closed does not match the lot's leader, price and bid count",
        )
        if lot.state is LotState.OPEN:
            assert lot.ends_at_ms is not None
            _require(event.at_ms <= lot.ends_at_ms, "closed after its deadline")

        self._lot = replace(
            lot,
            state=state,
            ends_at_ms=event.at_ms,
            remaining_ms=None,
            outcome=event.outcome,
        )
        self._results.append(event)

    def _apply_increment_changed(self, event: IncrementChanged) -> None:
        lot = self._lot
        running = lot is not None and lot.state is not LotState.CLOSED
        expected = lot.number if running and lot is not None else None
        _require(event.lot == expected, f"increment_changed is not for lot {expected}")
        _require(event.increment_cents > 0, "an increment must be positive")

        self._default_increment_cents = event.increment_cents
        if running and lot is not None:
            self._lot = replace(lot, increment_cents=event.increment_cents)

    def _apply_chat(self, event: ChatPosted) -> None:
        self._chat.append(event)
        self._participants.add(event.author)
        self._chats_by_request[(event.author, event.request_id)] = event
        if len(self._chats_by_request) > self.rules.chats_remembered:
            self._chats_by_request.popitem(last=False)

    def _apply_host_changed(self, event: HostChanged) -> None:
        _require(event.host != self._host, "host_changed changes nothing")
        self._host = event.host

    _APPLIERS: dict[type, Any] = {
        LotOpened: _apply_lot_opened,
        BidPlaced: _apply_bid,
        LotExtended: _apply_lot_extended,
        LotPaused: _apply_lot_paused,
        LotResumed: _apply_lot_resumed,
        IncrementChanged: _apply_increment_changed,
        LotClosed: _apply_lot_closed,
        ChatPosted: _apply_chat,
        HostChanged: _apply_host_changed,
    }

    # --- Queries ---

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        """The state part of docs/protocol.md's snapshot notice.

        Gives ``seq``, ``lot``, ``host``, ``chat`` (oldest first, at most
        ``rules.chat_history``) and ``results`` (the last
        ``rules.results_history`` lot_closed events); the service adds
        ``type``, ``bidders``, ``viewers``, ``server_time_ms`` and filters
        ``results``.  It depends only on the events applied, so a replayed
        auction gives the same snapshot; ``now_ms`` is accepted for the
        agreed signature and is not used.
        """
        return {
            "seq": self._last_seq,
            "lot": None if self._lot is None else self._lot.to_dict(),
            "host": self._host,
            "chat": [event_to_dict(event) for event in self._chat],
            "results": [event_to_dict(event) for event in self._results],
        }

    def accepted_bid(self, actor: str, request_id: str) -> BidPlaced | None:
        """The bid ``actor`` placed with ``request_id`` on the current or the
        previous lot, else None.  The service uses it to answer a retry after
        a restart; older lots are forgotten to bound memory."""
        for lot in sorted(self._bids_by_request, reverse=True):
            if found := self._bids_by_request[lot].get((actor, request_id)):
                return found
        return None

    def accepted_chat(self, actor: str, request_id: str) -> ChatPosted | None:
        """The recent message ``actor`` posted with ``request_id``, else None."""
        return self._chats_by_request.get((actor, request_id))

    def has_participated(self, name: str) -> bool:
        """True once ``name`` has bid or chatted in this auction."""
        return name in self._participants

    @property
    def participants(self) -> frozenset[str]:
        """Every name that has bid or chatted in this auction."""
        return frozenset(self._participants)


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
