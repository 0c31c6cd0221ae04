"""The bidder task: one simulated bidder, from first connection to last reply.

A bidder joins, waits for the run's lot to open, then bids (and chats) at
its planned pace until it sees the lot close, waits for the replies it is
still owed, and leaves.  If its connection drops (or, in the ``churn``
scenario, when it decides to drop it) it reconnects with its session and
last seq and sends every unanswered request again with the same id.

A *slow* bidder joins and then stops reading (or reads one frame now and
then); once the lot is over it drains whatever the server still sends, so
the report can say how the server treated it.

Every bidder stops by itself: when the lot closes, or at the worker's hard
deadline, whichever comes first.
"""

import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from bidwar import money
from bidwar.loadtest import scenarios
from bidwar.loadtest.client_state import Request
from bidwar.loadtest.metrics import AcceptedBid, GroupTally
from bidwar.loadtest.scenarios import BidderPlan, Scenario
from bidwar.loadtest.wire_client import JoinFailed, Target, WireClient

log = logging.getLogger("bidwar.loadtest")

MAX_CONNECT_FAILURES = 3
CHAT_TEXT = "load test chatter, please ignore: "


@dataclasses.dataclass
class Crowd:
    """What the bidders of one worker process share.

    ``lot_over`` is set by the first bidder that sees the run's lot close;
    slow bidders (who see nothing) wait for it.  ``deadline`` is the trio
    time at which every bidder gives up, whatever it is doing.
    """

    target: Target
    scenario: Scenario
    duration_s: float
    deadline: float
    connect_limiter: trio.CapacityLimiter
    slow_mode: str = "never"
    slow_read_interval_s: float = 0.2
    churn_every_s: float = 3.0
    # Long enough that an overloaded server's late replies still count as
    # replies: only a reply that never comes is a violation.
    reply_grace_s: float = 30.0
    drain_s: float = 5.0
    drain_quiet_s: float = 0.5
    lot_over: trio.Event = dataclasses.field(default_factory=trio.Event)
    joined: int = 0
    gave_up: int = 0


class Bidder(WireClient):
    """One bidder; :meth:`run` returns when it is done (never raises)."""

    def __init__(self, plan: BidderPlan, crowd: Crowd, tally: GroupTally) -> None:
        super().__init__(plan.name, crowd.target, tally)
        self.plan = plan
        self.crowd = crowd
        self.random = random.Random(plan.seed)
        self.run_lot: int | None = None
        self.original_end_ms: int | None = None
        self.saw_end = False
        self._lot_live = trio.Event()
        self._progress = trio.Event()
        self._connection_scope: trio.CancelScope | None = None

    async def run(self) -> None:
        self.tally.clients += 1
        try:
            with trio.move_on_at(self.crowd.deadline):
                if self.plan.slow:
                    await self._run_slow()
                else:
                    await self._run_active()
        finally:
            self.tally.messages_per_client.append(self.messages)
            self.tally.resyncs += max(0, self.seqs.snapshots - self.fresh_joins)
            if not self.plan.slow:
                self.ledger.check_all_answered()

    # --------------------------------------------------------- active bidders

    async def _run_active(self) -> None:
        failures = 0
        while not self._done():
            try:
                await self._one_connection()
                failures = 0
            except (HandshakeError, OSError, JoinFailed) as error:
                failures += 1
                self.tally.connections_failed += 1
                log.debug("%s: connection failed: %s", self.name, error)
                if failures >= MAX_CONNECT_FAILURES:
                    self.crowd.gave_up += self.joins == 0
                    return
            if not self._done():
                self.tally.reconnects += 1
                # A little jitter so that a mass disconnect does not come back
                # as one thundering herd.
                await trio.sleep(self.random.uniform(0.01, 0.2))

    def _done(self) -> bool:
        return self.saw_end and not self.ledger.unanswered

    async def _one_connection(self) -> None:
        try:
            async with (
                self._joined_connection() as websocket,
                trio.open_nursery() as nursery,
            ):
                self._connection_scope = nursery.cancel_scope
                nursery.start_soon(self._read_then_hang_up, websocket)
                await self._guarded(self._live, websocket)
                nursery.cancel_scope.cancel()
        except ConnectionClosed as closed:
            # Closed while joining; once joined the reader records closes.
            self.record_close(closed)

    @contextlib.asynccontextmanager
    async def _joined_connection(self) -> AsyncIterator[WebSocketConnection]:
        """A connection that has joined (or resumed); closed on leaving."""
        async with contextlib.AsyncExitStack() as stack:
            first = self.joins == 0
            # Thousands of simultaneous TLS handshakes would only time each
            # other out, so first joins take turns; reconnects go straight in.
            limiter = self.crowd.connect_limiter if first else contextlib.nullcontext()
            async with limiter:
                websocket = await stack.enter_async_context(self.connected())
                await self.join(websocket)
            if first:
                self.crowd.joined += 1
            yield websocket

    async def _guarded(self, action: Any, websocket: WebSocketConnection) -> None:
        """Run ``action``; a connection closed under it ends the connection.

        The reader records the close code; here the other tasks only stop.
        """
        try:
            await action(websocket)
        except ConnectionClosed:
            self._hang_up()

    def _hang_up(self) -> None:
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    async def _live(self, websocket: WebSocketConnection) -> None:
        await self.resend_unanswered(websocket)

        with trio.move_on_after(self._lifetime_s()) as lifetime:
            async with trio.open_nursery() as actions:
                if self.plan.bid_interval_s is not None:
                    actions.start_soon(self._guarded, self._bid_loop, websocket)
                if self.plan.chat_interval_s is not None:
                    actions.start_soon(self._guarded, self._chat_loop, websocket)
            await self._wait_for_end_and_replies()

        if lifetime.cancelled_caught and self.random.random() < 0.5:
            # Leave with a bid in flight, so its reply is lost with the
            # connection and has to come back through a resend.
            await self._maybe_bid(websocket)

    def _lifetime_s(self) -> float:
        if not self.crowd.scenario.churn:
            return float("inf")
        every = self.crowd.churn_every_s
        return self.random.uniform(0.5 * every, 1.5 * every)

    async def _read_then_hang_up(self, websocket: WebSocketConnection) -> None:
        await self.read_until_closed(websocket)
        self._hang_up()

    async def _wait_for_end_and_replies(self) -> None:
        while not self.saw_end:
            await self._wait_progress()
        with trio.move_on_after(self.crowd.reply_grace_s):
            while self.ledger.unanswered:
                await self._wait_progress()

    async def _wait_progress(self) -> None:
        await self._progress.wait()
        self._progress = trio.Event()

    # ---------------------------------------------------------------- pacing

    async def _bid_loop(self, websocket: WebSocketConnection) -> None:
        await self._lot_live.wait()
        interval = self.plan.bid_interval_s or 1.0
        stop_at = trio.current_time() + scenarios.bidding_window_s(
            self.crowd.scenario, self.crowd.duration_s
        )
        await trio.sleep(self.random.uniform(0, interval))
        while not self.saw_end and trio.current_time() < stop_at:
            await self._maybe_bid(websocket)
            share = scenarios.rate_share(self.crowd.scenario, self._seconds_to_end())
            await trio.sleep(interval / share * self.random.uniform(0.5, 1.5))

    async def _maybe_bid(self, websocket: WebSocketConnection) -> None:
        view = self.view
        if view.lot != self.run_lot or not view.is_open() or view.leader == self.name:
            return
        amount = money.format_cents(view.next_bid_cents())
        await self.send_request(websocket, "bid", amount=amount, lot=self.run_lot)

    async def _chat_loop(self, websocket: WebSocketConnection) -> None:
        await self._lot_live.wait()
        interval = self.plan.chat_interval_s or 1.0
        stop_at = trio.current_time() + self.crowd.duration_s
        await trio.sleep(self.random.uniform(0, interval))
        count = 0
        while not self.saw_end and trio.current_time() < stop_at:
            count += 1
            text = f"{CHAT_TEXT}{self.name} #{count}"
            await self.send_request(websocket, "message", text=text)
            await trio.sleep(interval * self.random.uniform(0.5, 1.5))

    def _seconds_to_end(self) -> float | None:
        if self.original_end_ms is None:
            return None
        return (self.original_end_ms - time.time() * 1000) / 1000

    # ----------------------------------------------------------------- hooks

    def on_event(self, event: dict[str, Any], received_ms: float) -> None:
        kind = event["type"]
        if kind == "bid":
            if not self.plan.slow:
                self.tally.broadcast_ms.record(received_ms - event["at_ms"])
        elif kind == "lot_opened":
            self._adopt_lot(event["lot"], event["ends_at_ms"])
        elif kind == "lot_closed" and event["lot"] == self.run_lot:
            self._lot_ended(event)

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        lot = snapshot["lot"]
        if lot is not None and lot["state"] in ("open", "paused"):
            self._adopt_lot(lot["lot"], lot.get("ends_at_ms"))
        for result in snapshot.get("results", ()):
            if result["lot"] == self.run_lot:
                self._lot_ended(result)

    def on_reply(self, request: Request, reply: dict[str, Any]) -> None:
        if request.kind == "bid":
            if request.sends == 1:
                self.tally.ack_ms.record((time.perf_counter() - request.sent_at) * 1000)
            if reply["type"] == "accepted":
                self._record_accepted(request, reply["result"])
        self._progress.set()

    def _record_accepted(self, request: Request, result: dict[str, Any]) -> None:
        self.tally.accepted_bids.append(
            AcceptedBid(
                bidder=self.name,
                request_id=request.id,
                lot=result["lot"],
                amount_cents=money.parse_amount(result["amount"]),
                seq=result["seq"],
            )
        )

    def _adopt_lot(self, lot: int, ends_at_ms: int | None) -> None:
        if self.run_lot is None:
            self.run_lot = lot
            self.original_end_ms = ends_at_ms
            self._lot_live.set()

    def _lot_ended(self, closed: dict[str, Any]) -> None:
        if self.saw_end:
            return
        self.saw_end = True
        key = (closed["lot"], closed["outcome"], closed["winner"], closed["price"])
        self.tally.closed_lots[key] += 1
        self.crowd.lot_over.set()
        self._lot_live.set()  # let waiting loops notice the end
        self._progress.set()

    # ----------------------------------------------------------- slow bidders

    async def _run_slow(self) -> None:
        try:
            async with self._joined_connection() as websocket:
                if self.crowd.slow_mode == "slow":
                    await self._read_slowly(websocket)
                else:
                    await self.crowd.lot_over.wait()
                await self._drain(websocket)
        except (HandshakeError, OSError, JoinFailed) as error:
            self.tally.connections_failed += 1
            self.crowd.gave_up += self.joins == 0
            log.debug("%s: connection failed: %s", self.name, error)
        except ConnectionClosed as closed:
            self.record_close(closed)

    async def _drain(self, websocket: WebSocketConnection) -> None:
        """Read what the server still has for us: until it closes, goes quiet
        for ``drain_quiet_s``, or ``drain_s`` is up."""
        with trio.move_on_after(self.crowd.drain_s):
            while True:
                with trio.move_on_after(self.crowd.drain_quiet_s) as quiet:
                    frame = await websocket.get_message()
                if quiet.cancelled_caught:
                    return
                self.handle_frame(frame)

    async def _read_slowly(self, websocket: WebSocketConnection) -> None:
        while not self.crowd.lot_over.is_set():
            self.handle_frame(await websocket.get_message())
            await trio.sleep(self.crowd.slow_read_interval_s)
