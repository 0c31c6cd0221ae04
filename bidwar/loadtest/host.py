"""The host of a load test: takes the host role, opens the lot, ends it.

It also listens: as one client that never falls behind it records every bid
event and the final ``lot_closed``, which the invariant checks compare with
what the bidders were told.
"""

import dataclasses
import logging
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from bidwar.loadtest.client_state import Request
from bidwar.loadtest.metrics import GroupTally
from bidwar.loadtest.wire_client import Target, WireClient

log = logging.getLogger("bidwar.loadtest")


class HostError(Exception):
    """The host could not take the role or drive the lot; the message says why."""


@dataclasses.dataclass
class HostRecord:
    """What the host saw: the lot, its bid events and how it ended."""

    lot: int | None = None
    opened_at_ms: int | None = None
    original_end_ms: int | None = None
    # seq -> (bidder, request_id, amount, lot) for every bid event seen.
    bids: dict[int, tuple[str, str, str, int]] = dataclasses.field(default_factory=dict)
    extensions: int = 0
    closed: dict[str, Any] | None = None
    closed_by_host: bool = False
    complete: bool = True  # False if the host itself had to resync
    tally: GroupTally = dataclasses.field(default_factory=GroupTally)


class Host(WireClient):
    """The host's connection; use :meth:`session` and then its methods."""

    def __init__(self, name: str, key: str, target: Target) -> None:
        self.record = HostRecord()
        super().__init__(name, target, self.record.tally)
        self._key = key
        self._replies: dict[str, trio.Event] = {}
        self._answers: dict[str, dict[str, Any]] = {}
        self._closed = trio.Event()
        self._websocket: WebSocketConnection | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, join and claim the host role; ``started()`` once host.

        Keeps reading until cancelled.  Raises :class:`HostError` when the
        role is refused (a wrong ``--host-key``, or another host).
        """
        async with self.connected(message_queue_size=64) as websocket:
            await self.join(websocket)
            self._websocket = websocket
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, websocket)
                await self._claim()
                await self._close_leftover_lot()
                task_status.started()
                await trio.sleep_forever()

    async def open_lot(self, fields: dict[str, Any]) -> int:
        """Open the run's lot; return its number."""
        result = await self.call("open", **fields)
        self.record.lot = result["lot"]
        self.record.original_end_ms = result.get("ends_at_ms")
        log.info("lot %s opened", self.record.lot)
        return self.record.lot

    async def close_lot(self) -> None:
        """Close the lot now unless it has already ended by itself."""
        if self._closed.is_set():
            return
        reply = await self.call("close", allow=("lot_closed", "no_lot"))
        self.record.closed_by_host = reply is not None

    async def wait_closed(self, timeout_s: float) -> bool:
        """Wait for the run lot's ``lot_closed`` event; False on timeout."""
        with trio.move_on_after(timeout_s):
            await self._closed.wait()
        return self._closed.is_set()

    async def call(self, kind: str, *, allow: tuple[str, ...] = (), **fields: Any):
        """Send a request and return its result; HostError when rejected.

        A rejection whose reason is in ``allow`` returns None instead.
        """
        assert self._websocket is not None, "call() before serve() started"
        request_id = await self.send_request(self._websocket, kind, **fields)
        if request_id not in self._answers:
            # The reader may already have it: it runs while we send.
            done = self._replies[request_id] = trio.Event()
            await done.wait()
        reply = self._answers.pop(request_id)
        if reply["type"] == "accepted":
            return reply["result"]
        if reply["reason"] in allow:
            return None
        raise HostError(f"{kind} was rejected: {reply['reason']}: {reply['message']}")

    async def _claim(self) -> None:
        await self.call("host_request", key=self._key)
        log.info("joined as host %s", self.name)

    async def _close_leftover_lot(self) -> None:
        # A lot left open by an earlier run would swallow this run's bids.
        if self.view.state in ("open", "paused"):
            log.info("closing lot %s left open by an earlier run", self.view.lot)
            await self.call("close", allow=("lot_closed", "no_lot"))

    async def _read(self, websocket: WebSocketConnection) -> None:
        try:
            await self.read_until_closed(websocket)
        finally:
            self._closed.set()  # nobody waits forever on a dead connection

    # ----------------------------------------------------------------- hooks

    def on_event(self, event: dict[str, Any], received_ms: float) -> None:
        kind, record = event["type"], self.record
        if kind == "bid":
            record.bids[event["seq"]] = (
                event["bidder"],
                event["request_id"],
                event["amount"],
                event["lot"],
            )
        elif kind == "lot_opened" and record.lot is None:
            record.opened_at_ms = event["at_ms"]
        elif kind == "lot_extended" and event["lot"] == record.lot:
            record.extensions += 1
        elif kind == "lot_closed" and event["lot"] == record.lot:
            record.closed = event
            self._closed.set()

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        if self.seqs.snapshots > self.fresh_joins:
            self.record.complete = False

    def on_reply(self, request: Request, reply: dict[str, Any]) -> None:
        self._answers[request.id] = reply
        event = self._replies.pop(request.id, None)
        if event is not None:
            event.set()
