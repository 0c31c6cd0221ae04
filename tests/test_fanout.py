"""Fan-out: bounded per-connection queues, conflation for slow readers, eviction."""

import json
from typing import Any

import pytest
import trio
from trio_websocket import CloseReason, ConnectionClosed

from bidwar import protocol
from bidwar.auction_service import AuctionServiceConfig, Connection
from bidwar.fanout import Outbox, OutboxOverflow
from tests.room_fakes import FakeMember, join, sequenced, start_room

# ---------------------------------------------------------------- Outbox


def snapshot_at(seq: int):
    def make(last_seq: int) -> tuple[int, str]:
        return seq, json.dumps({"type": "snapshot", "seq": seq, "after": last_seq})

    return make


def event(seq: int) -> str:
    return json.dumps({"type": "chat", "seq": seq})


async def drain(outbox: Outbox, count: int) -> list[dict[str, Any]]:
    return [json.loads(await outbox.next_frame()) for _ in range(count)]


async def test_frames_leave_in_the_order_they_were_pushed():
    outbox = Outbox(snapshot_at(0), max_events=10)
    outbox.push_event(1, event(1))
    outbox.push_direct('{"type": "accepted", "id": "a"}')
    outbox.push_event(2, event(2))

    frames = await drain(outbox, 3)
    assert [f.get("seq", f.get("id")) for f in frames] == [1, "a", 2]


async def test_a_full_queue_is_replaced_by_one_snapshot_in_place():
    outbox = Outbox(snapshot_at(7), max_events=3)
    outbox.push_direct('{"type": "accepted", "id": "before"}')
    for seq in range(1, 7):
        outbox.push_event(seq, event(seq))
    outbox.push_event(7, event(7))  # covered by the snapshot
    outbox.push_direct('{"type": "accepted", "id": "after"}')
    outbox.push_event(8, event(8))  # the snapshot is still pending: covered

    frames = await drain(outbox, 3)
    assert frames[0]["id"] == "before"
    assert frames[1] == {"type": "snapshot", "seq": 7, "after": 0}
    assert frames[2]["id"] == "after"
    assert outbox.last_sent_seq == 7

    outbox.push_event(8, event(8))
    assert (await drain(outbox, 1))[0]["seq"] == 8
    assert outbox.statistics().resyncs == 1


async def test_replies_are_never_dropped_but_are_bounded():
    outbox = Outbox(snapshot_at(0), max_events=1, max_direct=3)
    for index in range(3):
        outbox.push_direct(f'{{"id": "{index}"}}')
        outbox.push_event(index + 1, event(index + 1))

    with pytest.raises(OutboxOverflow):
        outbox.push_direct('{"id": "one too many"}')
    assert outbox.statistics().queued_direct == 3


async def test_notices_keep_only_the_latest_of_each_kind():
    outbox = Outbox(snapshot_at(0))
    for bidders in range(5):
        outbox.push_notice("presence", json.dumps({"bidders": bidders}))

    assert await drain(outbox, 1) == [{"bidders": 4}]
    with trio.move_on_after(1):
        await outbox.next_frame()
        pytest.fail("a conflated notice was sent twice")


async def test_next_frame_waits_for_a_push(autojump_clock):
    outbox = Outbox(snapshot_at(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: trio.sleep(5))
        with trio.move_on_after(1):
            await outbox.next_frame()
            pytest.fail("returned with nothing queued")

        async def push_later() -> None:
            await trio.sleep(2)
            outbox.push_event(1, event(1))

        nursery.start_soon(push_later)
        assert json.loads(await outbox.next_frame())["seq"] == 1


# ------------------------------------------------------------- the room


@pytest.fixture
async def room(nursery):
    return await start_room(nursery)


async def test_readers_get_every_event_in_order_while_silent_clients_are_conflated(
    room, nursery, net_clock
):
    readers = [FakeMember(room, f"reader{n}") for n in range(40)]
    silent = [FakeMember(room, f"silent{n}") for n in range(10)]
    for member in readers + silent:
        join(room, member)
    for member in readers:
        nursery.start_soon(member.read_forever)

    # The speaker waits for each reply, as a client does, so events trickle
    # out one commit at a time and the readers keep up.
    speaker = FakeMember(room, "speaker")
    nursery.start_soon(speaker.read_forever)
    speaker_session = join(room, speaker)
    for number in range(300):
        message = protocol.Message(type="message", id=f"m{number}", text="hi")
        room.handle(speaker_session, message)
        with trio.fail_after(10):
            await speaker.wait_for_seq(number + 1)

    with trio.fail_after(10):
        for member in readers:
            await member.wait_for_seq(300)
    for member in readers:
        assert sequenced(member.frames) == list(range(1, 301))
    for member in silent:
        statistics = member.outbox.statistics()
        assert statistics.queued_events == 0  # dropped in favour of a resync
        assert statistics.resyncs == 1
        frames = [json.loads(await member.outbox.next_frame()) for _ in range(2)]
        assert frames[0]["type"] == "accepted"  # the hello reply came first
        assert (frames[1]["type"], frames[1]["seq"]) == ("snapshot", 300)


# ------------------------------------------------------- a stalled socket


class StalledWebSocket:
    """A peer that sends nothing and whose receive window never opens."""

    remote = "stalled-peer"

    def __init__(self) -> None:
        self.close_code: int | None = None
        self._closed = trio.Event()

    async def get_message(self) -> str:
        await self._closed.wait()
        raise ConnectionClosed(CloseReason(self.close_code or 1006, None))

    async def send_message(self, message: str) -> None:
        await trio.sleep_forever()

    async def ping(self) -> None:
        await trio.sleep_forever()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.close_code = code
        self._closed.set()


async def test_a_client_whose_socket_stalls_is_disconnected_as_too_slow(
    room, autojump_clock
):
    websocket = StalledWebSocket()
    config = AuctionServiceConfig(send_timeout_s=10, hello_timeout_s=100)
    connection = Connection(websocket, room, config)  # type: ignore[arg-type]
    connection.outbox.push_direct('{"type": "bye-bye"}')

    with trio.fail_after(60):
        await connection.serve()

    assert websocket.close_code == 4001
    assert 10 <= trio.current_time() <= 10 + config.close_timeout_s


class DeadPeer(StalledWebSocket):
    """A peer whose socket still takes bytes but who never answers a ping."""

    async def send_message(self, message: str) -> None:
        pass


async def test_a_peer_that_never_answers_pings_is_closed_as_idle(room, autojump_clock):
    websocket = DeadPeer()
    config = AuctionServiceConfig(
        ping_interval_s=20, pong_timeout_s=20, hello_timeout_s=1000
    )

    with trio.fail_after(100):
        await Connection(websocket, room, config).serve()  # type: ignore[arg-type]

    assert websocket.close_code == 4002
    assert 40 <= trio.current_time() <= 40 + config.close_timeout_s
