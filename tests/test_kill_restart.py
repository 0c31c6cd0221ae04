"""SIGKILL the server in the middle of a bid war; nothing acknowledged is lost.

The server runs as a real process.  Bidders (real TLS clients in this test's
trio run) keep bidding and reconnecting while the server is killed and
restarted several times.  Afterwards every bid any bidder saw accepted must be
in the journal exactly once, the audit must pass, and every bidder's event
stream must have continued without a gap (or through an explicit snapshot).

This test needs real time (processes, fsync), so it waits on events and
output lines with generous deadlines instead of a mock clock.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from bidwar import journal, money, tls
from bidwar.client import BidderClient, ClientConfig

HOST_KEY = "kill-test-key"
KILLS = 3
BIDS_BETWEEN_KILLS = 15
READY = re.compile(rb"ready: auction port (\d+), signaling port (\d+)")

pytestmark = pytest.mark.slow


class ServerProcess:
    """``python -m bidwar.server`` on a fixed data directory and port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.process: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        command = [
            sys.executable, "-m", "bidwar.server", "--data-dir", str(self.data_dir),
            "--port", str(self.port), "--signaling-port", "0",
        ]  # fmt: skip
        self.process = await nursery.start(
            lambda task_status: trio.run_process(
                command,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                check=False,
                env={**os.environ, "BIDWAR_HOST_KEY": HOST_KEY},
                task_status=task_status,
            )
        )
        output = b""
        with trio.fail_after(30):
            async for chunk in self.process.stderr:
                output += chunk
                if match := READY.search(output):
                    self.port = int(match.group(1))
                    break
        nursery.start_soon(_drain, self.process.stderr)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            return await self.process.wait()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    async for _ in stream:
        pass


class Tracker:
    """What one client saw: accepted bids, and the continuity of its events."""

    def __init__(self) -> None:
        self.accepted: list[tuple[str, str]] = []  # (request id, amount)
        self.gaps: list[str] = []
        self.last_seq: int | None = None

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "snapshot":
            self.last_seq = frame["seq"]
        elif "seq" in frame and kind not in ("accepted", "rejected"):
            if self.last_seq is not None and frame["seq"] != self.last_seq + 1:
                self.gaps.append(f"{self.last_seq} -> {frame['seq']}")
            self.last_seq = frame["seq"]


async def keep_bidding(
    client: BidderClient, tracker: Tracker, stop: trio.Event
) -> None:
    while not stop.is_set():
        lot = client.view.lot
        if lot is None or lot.state != "open" or lot.leader == client.config.name:
            await trio.sleep(0.02)
            continue
        amount = money.parse_amount(lot.price or lot.starting_price) + (
            money.parse_amount(lot.increment) if lot.price else 0
        )
        reply = await client.request("bid", amount=money.format_cents(amount))
        if reply["type"] == "accepted":
            tracker.accepted.append((reply["id"], reply["result"]["amount"]))


async def host_keeps_lot_running(host: BidderClient, stop: trio.Event) -> None:
    """Whenever the lot comes back paused after a restart, take it over and resume."""
    while not stop.is_set():
        lot = host.view.lot
        if lot is not None and lot.state == "paused":
            await host.request("host_request", key=HOST_KEY)
            await host.request("resume")
        await trio.sleep(0.05)


async def test_no_acknowledged_bid_is_lost_across_sigkills(tmp_path):
    server = ServerProcess(tmp_path / "data")
    names = ["ann", "bob", "cat", "dan"]
    trackers = {name: Tracker() for name in names}

    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        context = tls.client_context(server.data_dir / "cert.pem")
        url = f"wss://localhost:{server.port}/"

        def client(name: str, tracker: Tracker) -> BidderClient:
            config = ClientConfig(
                url=url, name=name, ssl_context=context, backoff_max_s=0.5
            )
            return BidderClient(config, on_frame=tracker.on_frame)

        host = client("host", Tracker())
        await nursery.start(host.run)
        assert (await host.request("host_request", key=HOST_KEY))["type"] == "accepted"
        opened = await host.request(
            "open", title="Clock", starting_price="1", duration_s=3600, increment="1"
        )
        assert opened["type"] == "accepted"

        stop = trio.Event()
        bidders = {name: client(name, trackers[name]) for name in names}
        async with trio.open_nursery() as war:
            for name, bidder in bidders.items():
                await war.start(bidder.run)
                war.start_soon(keep_bidding, bidder, trackers[name], stop)
            war.start_soon(host_keeps_lot_running, host, stop)

            for _ in range(KILLS):
                target = _accepted_count(trackers) + BIDS_BETWEEN_KILLS
                with trio.fail_after(30):
                    while _accepted_count(trackers) < target:
                        await trio.sleep(0.05)
                await server.kill()
                await server.start(nursery)

            target = _accepted_count(trackers) + BIDS_BETWEEN_KILLS
            with trio.fail_after(30):
                while _accepted_count(trackers) < target:
                    await trio.sleep(0.05)
            stop.set()
            for bidder in (*bidders.values(), host):
                with trio.fail_after(10):
                    await bidder.drain()
                await bidder.close()
            war.cancel_scope.cancel()

        assert await server.stop() == 0
        nursery.cancel_scope.cancel()

    records, damage = journal.scan_journal(server.data_dir)
    assert damage is None
    journaled = [
        (r.body["request_id"], r.body["amount"]) for r in records if r.kind == "bid"
    ]
    assert len(journaled) == len(set(journaled)), "a bid was journaled twice"
    for name, tracker in trackers.items():
        missing = set(tracker.accepted) - set(journaled)
        assert not missing, f"{name}'s acknowledged bids missing: {missing}"
        assert not tracker.gaps, f"{name} saw sequence gaps: {tracker.gaps}"

    audit = subprocess.run(
        [sys.executable, "-m", "bidwar.audit", "--data-dir", str(server.data_dir)],
        capture_output=True,
        check=False,
    )
    assert audit.returncode == 0, audit.stderr


def _accepted_count(trackers: dict[str, Tracker]) -> int:
    return sum(len(tracker.accepted) for tracker in trackers.values())
