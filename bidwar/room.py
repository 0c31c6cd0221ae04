"""The auction room: one writer that orders, journals and publishes everything.

How this works
--------------

All connections of an auction share one :class:`AuctionRoom`.  Its request
handling is synchronous: between applying a command to the rules engine and
handing the resulting events to the journal there is no ``await``, so the
order in which trio runs the calls *is* the auction's order, the journal's
order and the order of the sequence numbers everyone sees.  That is the
"one writer per auction" of DESIGN.md without a queue hop per request.

Nothing is told before it is durable.  Accepted commands are applied to
``self._live`` (the rules engine, always up to date) and submitted to the
group committer, which calls back once the batch is fsynced.  Only then are
the events applied to ``self._published`` (a second engine that holds exactly
the durable state), broadcast, and the replies sent.  Replies that carry no
event (rejections, status) wait behind any batch still in flight so that a
client's replies keep their order and never describe state that may yet be
lost.  Snapshots are always taken from ``self._published``.

If a journal write fails, everything behind it is refused with
``unavailable`` and ``self._live`` is rebuilt from ``self._published``: the
in-memory state never runs ahead of the disk for longer than one batch.

Replies are addressed to a *session* (a bidder name), not to a connection, so
a reply that was pending when a connection dropped reaches the reconnected
client.  Each session remembers its recent replies by request id; a retried
id gets the stored reply instead of acting twice.
"""

import base64
import collections
import copy
import dataclasses
import datetime
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio

from bidwar import core, journal, protocol
from bidwar.clock import ServerClock
from bidwar.fanout import Outbox, OutboxOverflow
from bidwar.group_commit import GroupCommitter
from bidwar.protocol import RequestError

log = logging.getLogger("bidwar.room")

_PENDING = None  # marks a request id whose reply is not ready yet
# A tick and a decision together make at most this many events (a close, or
# a bid and an extension); room for them is checked before deciding.
_MAX_EVENTS_PER_STEP = 4
_EARLIER_WRITE_FAILED = RuntimeError("an earlier journal write failed")


@dataclasses.dataclass(frozen=True)
class RoomConfig:
    host_key: str
    session_secret: bytes
    max_chat_chars: int = protocol.DEFAULT_MAX_CHAT_CHARS
    replies_per_session: int = 1000
    replay_events: int = 10_000
    presence_interval_s: float = 0.5
    # Above this many bidders the interval grows in proportion, so presence
    # costs about the same frames per second however full the room is.
    presence_full_rate_bidders: int = 200
    rules: core.Rules = dataclasses.field(default_factory=core.Rules)


class Member(Protocol):
    """What the room needs from a connection."""

    connection_id: str
    outbox: Outbox

    def close_soon(self, code: int, reason: str) -> None:
        """Ask the connection to close with ``code`` (does not wait)."""


@dataclasses.dataclass
class Session:
    name: str
    token: str
    member: Member | None = None
    replies: collections.OrderedDict[str, str | None] = dataclasses.field(
        default_factory=collections.OrderedDict
    )


Output = Callable[[BaseException | None], None]


class AuctionRoom:
    """Orders requests, journals events, publishes them to members."""

    def __init__(
        self,
        config: RoomConfig,
        clock: ServerClock,
        committer: GroupCommitter,
        durable_state: core.Auction,
        replay: list[dict[str, Any]] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._committer = committer
        self._published = durable_state
        self._live = copy.deepcopy(durable_state)

        self._sessions: dict[str, Session] = {}
        # Names held (connected, or bid or chatted) by their protocol.name_key,
        # so that a look-alike of a held name is refused.
        self._held: dict[str, set[str]] = collections.defaultdict(set)
        for name in durable_state.participants:
            self._hold(name)
        self._ring: collections.deque[tuple[int, str]] = collections.deque(
            maxlen=config.replay_events
        )
        for event in replay or ():
            self._ring.append((event["seq"], protocol.encode(event)))

        self._in_flight = 0
        self._tail_outputs: list[Output] | None = None
        self._rebuild_pending = False
        self._fatal: Exception | None = None
        self._viewers = 0
        self._deadline_changed = trio.Event()
        self._presence_changed = trio.Event()

    # ----------------------------------------------------------- membership

    def join(self, hello: protocol.Hello, member: Member) -> Session:
        """Admit ``member`` as ``hello.name`` and queue its welcome.

        Raises :class:`RequestError` when the name or session is refused;
        nothing changes then.
        """
        name = protocol.check_name(hello.name)
        resumed = hello.session is not None
        if resumed:
            self._check_token(name, hello.session)
        elif self._name_is_claimed(name):
            raise RequestError(
                "name_taken",
                f"{name!r} is in use: pick another name, or resume with its session "
                "(the bidder's --resume)",
            )

        session = self._claim_session(name, member, resumed)
        self._hold(name)
        self._welcome(session, hello, resumed)
        self._presence_changed.set()
        log.info(
            "[%s] %s %s the auction",
            member.connection_id,
            name,
            "resumed" if resumed else "joined",
        )
        return session

    def leave(self, session: Session, member: Member) -> None:
        """Forget ``member``; release the host role if it held it."""
        if session.member is not member:
            return  # already replaced by a newer connection of the session

        session.member = None
        if not self._live.has_participated(session.name):
            self._held[protocol.name_key(session.name)].discard(session.name)
        self._presence_changed.set()
        log.info("[%s] %s left", member.connection_id, session.name)
        if self._live.host == session.name:
            command = core.ReleaseHost(actor=session.name, request_id="disconnect")
            self._decide(session, None, command)

    def set_viewers(self, count: int) -> None:
        """Record how many are watching the video (from the signaling service)."""
        self._viewers = count
        self._presence_changed.set()

    @property
    def bidder_count(self) -> int:
        return sum(1 for session in self._sessions.values() if session.member)

    # ------------------------------------------------------------- requests

    def handle(self, session: Session, request: Any) -> None:
        """Act on one validated request; its reply is queued, never returned."""
        if request.id in session.replies:
            self._repeat_reply(session, request.id)
            return
        session.replies[request.id] = _PENDING
        self._trim_replies(session)

        try:
            self._dispatch(session, request)
        except RequestError as error:
            self._reply_after_durable(
                session,
                request.id,
                protocol.rejected(request.id, error.reason, error.message),
            )

    def _dispatch(self, session: Session, request: Any) -> None:
        if isinstance(request, protocol.Status):
            self._reply_status(session, request.id)
            return
        # A retry of a request whose reply was lost with a restart: answer it
        # from the durable state instead of acting twice.
        if isinstance(request, protocol.Bid):
            previous = self._live.accepted_bid(session.name, request.id)
            if previous is not None:
                result = _bid_result(previous)
                self._reply_after_durable(
                    session, request.id, protocol.accepted(request.id, result)
                )
                return
        if isinstance(request, protocol.Message):
            posted = self._live.accepted_chat(session.name, request.id)
            if posted is not None:
                result = {"seq": posted.seq}
                self._reply_after_durable(
                    session, request.id, protocol.accepted(request.id, result)
                )
                return
        self._decide(session, request.id, self._command_for(session.name, request))

    def _command_for(self, actor: str, request: Any) -> Any:
        """Translate a wire request into a rules-engine command."""
        rid = request.id
        match request:
            case protocol.Bid(amount=amount, lot=lot):
                return core.PlaceBid(actor, rid, protocol.amount_cents(amount), lot)
            case protocol.Message(text=text):
                text = protocol.check_text(text, self._config.max_chat_chars)
                return core.PostChat(actor, rid, text)
            case protocol.HostRequest(key=key):
                self._check_host_key(key)
                return core.ClaimHost(actor, rid)
            case protocol.HostRelease():
                return core.ReleaseHost(actor, rid)
            case protocol.Open():
                return self._open_command(actor, request)
            case protocol.Close():
                return core.CloseLot(actor, rid)
            case protocol.Pause():
                return core.PauseLot(actor, rid)
            case protocol.Resume():
                return core.ResumeLot(actor, rid)
            case protocol.Increment(amount=amount):
                return core.SetIncrement(actor, rid, protocol.amount_cents(amount))
        raise RequestError("invalid_request", f"{request.type!r} is not handled here")

    def _open_command(self, actor: str, request: protocol.Open) -> core.OpenLot:
        increment = (
            protocol.amount_cents(request.increment)
            if request.increment is not None
            else None
        )
        return core.OpenLot(
            actor,
            request.id,
            title=protocol.check_title(request.title),
            starting_price_cents=protocol.amount_cents(request.starting_price),
            duration_s=request.duration_s,
            increment_cents=increment,
            sudden_death=request.sudden_death,
            extension_s=request.extension_s,
        )

    def _decide(self, session: Session, request_id: str | None, command: Any) -> None:
        """Apply ``command`` now; reply and publish once its events are durable."""
        if self._rebuild_pending or not self._committer.has_room(_MAX_EVENTS_PER_STEP):
            if request_id is not None:
                refusal = protocol.rejected(
                    request_id,
                    "unavailable",
                    "the journal is not accepting writes; retry",
                )
                self._reply_after_durable(session, request_id, refusal)
            return

        self.tick()
        decision = self._live.handle(command, self._clock.now_ms())
        if not decision.accepted or not decision.events:
            frame = (
                protocol.accepted(request_id, decision.result)
                if decision.accepted
                else protocol.rejected(request_id, decision.reason, decision.message)
            )
            if request_id is not None:
                self._reply_after_durable(session, request_id, frame)
            return

        def reply(error: BaseException | None) -> None:
            if request_id is not None:
                self._deliver(
                    session, request_id, _decision_frame(request_id, decision, error)
                )
            if error is None and decision.outbid:
                self._notify_outbid(decision)

        self._journal(decision.events, reply)

    # ------------------------------------------------------------ lot clock

    def tick(self) -> None:
        """Close the lot if its time is up (the server's clock decides)."""
        if self._rebuild_pending:
            return
        events = self._live.tick(self._clock.now_ms())
        if events:
            self._journal(events, lambda error: None)

    async def run_clock(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Close lots at their deadline; runs until cancelled."""
        task_status.started()
        while True:
            deadline_ms = self._live.deadline_ms()
            wake_at = (
                self._clock.trio_time(deadline_ms) if deadline_ms else float("inf")
            )
            with trio.move_on_at(wake_at):
                await self._deadline_changed.wait()
            self._deadline_changed = trio.Event()
            if self._fatal is not None:
                raise self._fatal
            await self._committer.wait_for_room(_MAX_EVENTS_PER_STEP)
            self.tick()

    async def run_presence(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Tell everyone the bidder and viewer counts, at most every interval."""
        task_status.started()
        last_sent: tuple[int, int] | None = None
        while True:
            await self._presence_changed.wait()
            self._presence_changed = trio.Event()
            counts = (self.bidder_count, self._viewers)
            if counts != last_sent:
                last_sent = counts
                self._broadcast_notice(
                    "presence",
                    protocol.encode(
                        {"type": "presence", "bidders": counts[0], "viewers": counts[1]}
                    ),
                )
            # A pause, not a race cover: presence is display-only, so bursts of
            # joins are folded into one update per interval.
            await trio.sleep(self._presence_interval_s(counts[0]))

    def _presence_interval_s(self, bidders: int) -> float:
        """The pause after a presence update: longer in a fuller room.

        Each update is one frame to every connection, so at a fixed interval
        a burst of N joins costs N frames per update and joining gets
        quadratic (1,000 joins were 2,000 frames/s of presence alone).
        """
        config = self._config
        scale = max(1.0, bidders / config.presence_full_rate_bidders)
        return config.presence_interval_s * scale

    # ----------------------------------------------------- journal pipeline

    def _journal(self, events: tuple[Any, ...], output: Output) -> None:
        records = [core.event_to_dict(event) for event in events]
        outputs = [output]
        self._in_flight += 1
        self._tail_outputs = outputs
        self._deadline_changed.set()
        self._committer.submit_nowait(
            records, lambda error: self._on_durable(events, records, outputs, error)
        )

    def _on_durable(
        self,
        events: tuple[Any, ...],
        records: list[dict[str, Any]],
        outputs: list[Output],
        error: BaseException | None,
    ) -> None:
        self._in_flight -= 1
        if self._tail_outputs is outputs:
            self._tail_outputs = None

        if error is not None and not self._rebuild_pending:
            log.error("journal write failed; refusing writes until rebuilt: %s", error)
            self._rebuild_pending = True
        if self._rebuild_pending:
            # Batches behind a failed one were refused by the committer too:
            # their events exist only in self._live, which is about to be
            # rebuilt, so their requests must hear that nothing happened.
            error = error or _EARLIER_WRITE_FAILED
        else:
            self._publish(events, records)

        for output in outputs:
            output(error)
        self._maybe_rebuild()

    def _maybe_rebuild(self) -> None:
        if not self._rebuild_pending or self._in_flight > 0:
            return
        stored_seq = self._committer.statistics().last_seq
        if stored_seq != self._published.last_seq:
            # A write reported failure yet reached the disk.  Only a restart,
            # which replays the journal, can make memory agree with it again.
            self._fatal = journal.JournalError(
                f"the journal holds events up to {stored_seq} but only "
                f"{self._published.last_seq} were confirmed; restart the server"
            )
            self._deadline_changed.set()
            return
        self._live = copy.deepcopy(self._published)
        self._rebuild_pending = False
        self._deadline_changed.set()
        log.warning(
            "in-memory state rebuilt from the durable state (seq %d)",
            self._published.last_seq,
        )

    def _reply_after_durable(
        self, session: Session, request_id: str, frame: str | Callable[[], str]
    ) -> None:
        """Send a reply once everything submitted before it is durable.

        ``frame`` may be a function, called only then, for replies that
        describe the state (status) and so must not be built too early.
        """

        def send(error: BaseException | None = None) -> None:
            text = frame if isinstance(frame, str) else frame()
            self._deliver(session, request_id, text)

        if self._tail_outputs is None:
            send()
        else:
            self._tail_outputs.append(send)

    def _publish(self, events: tuple[Any, ...], records: list[dict[str, Any]]) -> None:
        for event, record in zip(events, records, strict=True):
            self._published.apply(event)
            frame = protocol.encode(record)
            self._ring.append((record["seq"], frame))
            self._log_event(record)
            for session in self._sessions.values():
                if session.member is not None:
                    session.member.outbox.push_event(record["seq"], frame)

    # --------------------------------------------------------------- output

    def _deliver(self, session: Session, request_id: str, frame: str) -> None:
        if request_id in session.replies:
            session.replies[request_id] = frame
        self._send_direct(session, frame)

    def _repeat_reply(self, session: Session, request_id: str) -> None:
        frame = session.replies[request_id]
        if frame is not _PENDING:
            self._send_direct(session, frame)
        # A pending reply goes to the session's current connection when ready.

    def _send_direct(self, session: Session, frame: str) -> None:
        member = session.member
        if member is None:
            return
        try:
            member.outbox.push_direct(frame)
        except OutboxOverflow as error:
            log.warning(
                "[%s] %s is not reading: %s", member.connection_id, session.name, error
            )
            member.close_soon(4001, "too_slow")

    def _notify_outbid(self, decision: Any) -> None:
        loser = self._sessions.get(decision.outbid)
        bid = decision.events[0]
        if loser is None:
            return
        self._send_direct(
            loser,
            protocol.encode(
                {
                    "type": "outbid",
                    "lot": bid.lot,
                    "amount": core.event_to_dict(bid)["amount"],
                    "by": bid.bidder,
                }
            ),
        )

    def _broadcast_notice(self, key: str, frame: str) -> None:
        for session in self._sessions.values():
            if session.member is not None:
                session.member.outbox.push_notice(key, frame)

    def _reply_status(self, session: Session, request_id: str) -> None:
        def status_reply() -> str:
            snapshot = self._snapshot(since_seq=self._published.last_seq)
            return protocol.accepted(request_id, snapshot)

        self._reply_after_durable(session, request_id, status_reply)

    # ------------------------------------------------------------ snapshots

    def snapshot_frame(self, since_seq: int) -> tuple[int, str]:
        """A snapshot notice for a client whose last event was ``since_seq``."""
        body = self._snapshot(since_seq)
        return body["seq"], protocol.encode({"type": "snapshot", **body})

    def _snapshot(self, since_seq: int) -> dict[str, Any]:
        now_ms = self._clock.now_ms()
        body = self._published.snapshot(now_ms)
        body["results"] = [r for r in body["results"] if r["seq"] > since_seq]
        body.update(
            server_time_ms=now_ms, bidders=self.bidder_count, viewers=self._viewers
        )
        return body

    def _welcome(self, session: Session, hello: protocol.Hello, resumed: bool) -> None:
        member = session.member
        assert member is not None
        reply = protocol.accepted(
            hello.id,
            {
                "name": session.name,
                "session": session.token,
                "connection": member.connection_id,
                "server_time_ms": self._clock.now_ms(),
                "resumed": resumed,
            },
        )
        member.outbox.push_direct(reply)

        last_seq = hello.last_seq
        if last_seq is not None and self._can_replay_after(last_seq):
            member.outbox.start_after(last_seq)
            for seq, frame in self._ring:
                member.outbox.push_event(seq, frame)
        else:
            member.outbox.start_after(0)
            member.outbox.request_resync()

    def _can_replay_after(self, last_seq: int) -> bool:
        newest = self._published.last_seq
        if last_seq > newest:
            return False  # the client knows of events this server never made
        if last_seq == newest:
            return True
        return bool(self._ring) and self._ring[0][0] <= last_seq + 1

    # ------------------------------------------------------------- sessions

    def session_token(self, name: str) -> str:
        """The resume token for ``name``: stable across restarts, unforgeable."""
        digest = hmac.new(
            self._config.session_secret, name.encode("utf-8"), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode("ascii")

    def _check_token(self, name: str, token: str | None) -> None:
        # Compared as bytes: compare_digest refuses non-ASCII str.
        expected = self.session_token(name).encode("utf-8")
        if token is None or not hmac.compare_digest(token.encode("utf-8"), expected):
            raise RequestError("bad_session", "that session token is not for this name")

    def _check_host_key(self, key: str) -> None:
        if not hmac.compare_digest(
            key.encode("utf-8"), self._config.host_key.encode("utf-8")
        ):
            raise RequestError("bad_host_key", "that is not the host key")

    def _name_is_claimed(self, name: str) -> bool:
        session = self._sessions.get(name)
        connected = session is not None and session.member is not None
        look_alikes = self._held.get(protocol.name_key(name), set()) - {name}
        return connected or self._live.has_participated(name) or bool(look_alikes)

    def _hold(self, name: str) -> None:
        self._held[protocol.name_key(name)].add(name)

    def _claim_session(self, name: str, member: Member, resumed: bool) -> Session:
        session = self._sessions.get(name)
        if session is None or not resumed:
            session = Session(name=name, token=self.session_token(name))
            self._sessions[name] = session
        elif session.member is not None:
            log.info(
                "[%s] %s reconnected elsewhere: closing this connection",
                session.member.connection_id,
                name,
            )
            session.member.close_soon(4000, "replaced")
        session.member = member
        return session

    def _trim_replies(self, session: Session) -> None:
        while len(session.replies) > self._config.replies_per_session:
            session.replies.popitem(last=False)

    def _log_event(self, record: dict[str, Any]) -> None:
        kind = record["type"]
        if kind == "lot_opened":
            log.info(
                "lot %s opened: %r from %s, ends at %s",
                record["lot"],
                record["title"],
                record["starting_price"],
                _clock_time(record["ends_at_ms"]),
            )
        elif kind == "lot_extended":
            log.info(
                "lot %s extended to %s",
                record["lot"],
                _clock_time(record["ends_at_ms"]),
            )
        elif kind == "lot_closed":
            log.info(
                "lot %s closed: %s to %s at %s",
                record["lot"],
                record["outcome"],
                record["winner"],
                record["price"],
            )
        elif kind in ("lot_paused", "lot_resumed"):
            log.info("lot %s %s", record["lot"], kind.removeprefix("lot_"))
        elif kind == "host_changed":
            log.info("host is now %s", record["host"] or "nobody")
        else:
            log.debug("event %s", record)


def _clock_time(epoch_ms: int) -> str:
    """Epoch milliseconds as a local wall-clock time for the log."""
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000)
    return moment.strftime("%H:%M:%S.") + f"{epoch_ms % 1000:03d}"


def _bid_result(bid: Any) -> dict[str, Any]:
    record = core.event_to_dict(bid)
    return {"lot": record["lot"], "amount": record["amount"], "seq": record["seq"]}


def _decision_frame(request_id: str, decision: Any, error: BaseException | None) -> str:
    if error is not None:
        return protocol.rejected(
            request_id,
            "unavailable",
            "the journal could not store this; nothing changed",
        )
    return protocol.accepted(request_id, decision.result)
