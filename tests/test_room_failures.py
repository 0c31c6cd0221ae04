"""A failed journal write: the request hears "unavailable" and nothing changes."""

from typing import Any

import trio

from bidwar import protocol
from bidwar.journal import StorageError
from tests.room_fakes import FakeMember, MemoryStore, join, start_room


class FlakyStore(MemoryStore):
    """Fails the next write when told to, as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next_write = False

    def append_batch(self, events: Any) -> None:
        if self.fail_next_write:
            self.fail_next_write = False
            raise StorageError("database or disk is full (test)")
        super().append_batch(events)


def chat(request_id: str, text: str) -> protocol.Message:
    return protocol.Message(type="message", id=request_id, text=text)


async def test_a_failed_write_is_refused_and_the_room_carries_on(nursery, net_clock):
    store = FlakyStore()
    room = await start_room(nursery, store)
    ann = FakeMember(room, "ann")
    nursery.start_soon(ann.read_forever)
    session = join(room, ann)

    store.fail_next_write = True
    room.handle(session, chat("m1", "lost to the disk"))
    with trio.fail_after(10):
        refused = await ann.wait_for_reply("m1")
    assert (refused["type"], refused["reason"]) == ("rejected", "unavailable")

    room.handle(session, chat("m2", "kept"))
    with trio.fail_after(10):
        accepted = await ann.wait_for_reply("m2")

    # The lost event never happened: its seq is used again, nobody saw it,
    # and the journal holds only what was acknowledged.
    assert accepted["result"]["seq"] == 1
    assert [e["text"] for e in store.events] == ["kept"]
    assert [f["text"] for f in ann.frames if f["type"] == "chat"] == ["kept"]
