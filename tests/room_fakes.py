"""In-memory stand-ins for a room's store and connections."""

import json
from typing import Any

import trio

from bidwar import core, protocol
from bidwar.clock import ServerClock
from bidwar.fanout import Outbox
from bidwar.group_commit import GroupCommitter
from bidwar.journal import Recovery
from bidwar.room import AuctionRoom, RoomConfig


class MemoryStore:
    """An EventStore kept in a list, for tests that need no disk."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @property
    def last_seq(self) -> int:
        return self.events[-1]["seq"] if self.events else 0

    @property
    def last_at_ms(self) -> int | None:
        return self.events[-1]["at_ms"] if self.events else None

    def load(self) -> Recovery:
        return Recovery(records=[])

    def append_batch(self, events: Any) -> None:
        self.events.extend(events)

    def close(self) -> None:
        pass


class FakeMember:
    def __init__(self, room: AuctionRoom, name: str, max_events: int = 16) -> None:
        self.connection_id = name
        self.outbox = Outbox(room.snapshot_frame, max_events=max_events)
        self.closed: tuple[int, str] | None = None
        self.frames: list[dict[str, Any]] = []
        self._arrived = trio.Event()

    def close_soon(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    async def read_forever(self) -> None:
        while True:
            self.frames.append(json.loads(await self.outbox.next_frame()))
            self._arrived.set()
            self._arrived = trio.Event()

    async def wait_for_seq(self, seq: int) -> None:
        while seq not in sequenced(self.frames):
            await self._arrived.wait()

    async def wait_for_reply(self, request_id: str) -> dict[str, Any]:
        replies = ("accepted", "rejected")
        while True:
            for frame in self.frames:
                if frame["type"] in replies and frame.get("id") == request_id:
                    return frame
            await self._arrived.wait()


async def start_room(nursery: trio.Nursery, store: Any = None) -> AuctionRoom:
    """A room over ``store`` (in memory by default), its writer and clock running."""
    committer = GroupCommitter(store if store is not None else MemoryStore())
    await nursery.start(committer.run)
    room = AuctionRoom(
        RoomConfig(host_key="k", session_secret=b"s"),
        ServerClock(),
        committer,
        core.Auction(),
    )
    await nursery.start(room.run_clock)
    return room


def join(room: AuctionRoom, member: FakeMember):
    hello = protocol.Hello(type="hello", id="hello", name=member.connection_id)
    return room.join(hello, member)


def sequenced(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames if "seq" in f and f["type"] == "chat"]
