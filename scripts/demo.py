"""A whole live bid war on loopback, video included, narrated as it happens.

Started by ``scripts/demo``.  Runs the real programs as separate processes
(``bidwar.server``, a fake-camera ``bidwar.host`` and a headless, recording
``bidwar.viewer``) and, in this process, an auctioneer and three scripted
bidders speaking the real protocol over TLS through ``bidwar.client``:

* ann and bob raise each other steadily while within their budgets;
* cat is a sniper who only bids in the last seconds, so the soft close
  extends the lot;
* everyone chats a little.

It ends with the winner and the price, the viewer's video figures, and an
audit of the journal the server wrote.
"""

import argparse
import dataclasses
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bidwar import money, tls
from bidwar.client import BidderClient, ClientConfig
from bidwar.render import render_frame

PYTHON = sys.executable
READY_LINE = re.compile(r"ready: auction port (\d+), signaling port (\d+)")
STARTED_AT = time.monotonic()


# The programs' own log prefix ("2026-12-03 16:20:29,305 INFO    bidwar.x: ");
# the demo puts its own clock in front instead.
LOG_PREFIX = re.compile(
    r"^\d{4}-\d\d-\d\d [\d:,]+ +(?:[A-Z]+ +)?(?:bidwar[\w.]*:? +)?(?:[A-Z]+ +)?"
)


def say(source: str, text: str) -> None:
    stamp = time.monotonic() - STARTED_AT
    for line in text.splitlines():
        line = LOG_PREFIX.sub("", line)
        print(f"[{stamp:6.1f}s] {source:<8} {line}", flush=True)


@dataclasses.dataclass(frozen=True)
class Bidder:
    name: str
    budget_cents: int
    sniper: bool = False
    chat: tuple[str, ...] = ()


BIDDERS = (
    Bidder("ann", 180_00, chat=("This guitar is coming home with me.",)),
    Bidder("bob", 205_00, chat=("Not so fast, ann.",)),
    Bidder("cat", 260_00, sniper=True, chat=("Sniped.",)),
)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    output: Path
    lot_seconds: int
    extension_s: int
    video: bool


# ------------------------------------------------------------- processes


async def start_server(
    nursery: trio.Nursery, config: DemoConfig, host_key: str
) -> tuple[int, int, trio.Process]:
    """Start the server process; return its ports once it says it is ready."""
    data_dir = config.output / "data"
    ready = trio.Event()
    ports: list[int] = []

    def on_line(line: str) -> None:
        match = READY_LINE.search(line)
        if match:
            ports.extend(int(group) for group in match.groups())
            ready.set()
        say("server", line)

    process = await start_process(
        nursery,
        [
            PYTHON,
            "-m",
            "bidwar.server",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--signaling-port",
            "0",
        ],
        on_line,
        env={"BIDWAR_HOST_KEY": host_key},
    )
    with trio.fail_after(30):
        await ready.wait()
    return ports[0], ports[1], process


async def start_process(
    nursery: trio.Nursery,
    command: list[str],
    on_line: Any,
    env: dict[str, str] | None = None,
) -> trio.Process:
    """Start ``command``; every line it prints (both streams) goes to ``on_line``."""
    process = await nursery.start(
        lambda task_status: trio.run_process(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            env={**os.environ, **(env or {})},
            task_status=task_status,
        )
    )
    nursery.start_soon(pump_lines, process.stdout, on_line)
    return process


async def pump_lines(stream: trio.abc.ReceiveStream, on_line: Any) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            on_line(line.decode(errors="replace").rstrip())


async def stop(process: trio.Process, signum: int = signal.SIGINT) -> int:
    if process.returncode is None:
        process.send_signal(signum)
    with trio.move_on_after(10):
        return await process.wait()
    process.kill()
    return await process.wait()


# -------------------------------------------------------------- the war


def client_for(url: str, name: str, cafile: Path, **callbacks: Any) -> BidderClient:
    context = tls.client_context(cafile)
    return BidderClient(
        ClientConfig(url=url, name=name, ssl_context=context), **callbacks
    )


async def auctioneer(
    url: str, cafile: Path, host_key: str, config: DemoConfig, done: trio.Event
) -> dict[str, Any]:
    """Open the lot, narrate the room, and return the lot_closed event."""
    result: dict[str, Any] = {}
    client: BidderClient

    def narrate(frame: dict[str, Any]) -> None:
        if frame.get("type") in (
            "accepted",
            "rejected",
            "snapshot",
            "presence",
            "outbid",
        ):
            return
        text = render_frame(frame, client.view, "auctioneer", now_ms())
        if text:
            say("room", text)
        if frame.get("type") == "lot_closed":
            result.update(frame)
            done.set()

    client = client_for(url, "auctioneer", cafile, on_frame=narrate)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await expect_ok(client, "host_request", key=host_key)
        await expect_ok(
            client, "message", text="Welcome! Tonight: a signed 1959 guitar."
        )
        await expect_ok(
            client,
            "open",
            title="Signed 1959 guitar",
            starting_price="100",
            duration_s=config.lot_seconds,
            increment="5",
            extension_s=config.extension_s,
        )
        await done.wait()
        await expect_ok(client, "message", text="Thank you all, and congratulations!")
        await client.close()
        nursery.cancel_scope.cancel()
    return result


async def bidder(url: str, cafile: Path, who: Bidder, done: trio.Event) -> None:
    """Bid while under budget; the sniper waits for the last seconds."""
    client = client_for(
        url,
        who.name,
        cafile,
        on_frame=lambda frame: report_own(who.name, frame),
    )
    rng = random.Random(who.name)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        chat = list(who.chat)
        while not done.is_set():
            await trio.sleep(
                rng.uniform(0.3, 0.6) if who.sniper else rng.uniform(0.8, 2.0)
            )
            amount = next_bid(client, who)
            if amount is None:
                continue
            await client.request(
                "bid", amount=money.format_cents(amount), lot=client.view.lot.lot
            )
            if chat and rng.random() < 0.5:
                await client.request("message", text=chat.pop())
        await client.close()
        nursery.cancel_scope.cancel()


def next_bid(client: BidderClient, who: Bidder) -> int | None:
    """The amount to bid now, or None to wait."""
    lot = client.view.lot
    if lot is None or lot.state != "open" or lot.leader == who.name:
        return None
    if who.sniper:
        remaining = client.view.remaining_ms(now_ms())
        if remaining is None or remaining > 2_500:
            return None
    amount = (
        money.parse_amount(lot.price) + money.parse_amount(lot.increment)
        if lot.price
        else money.parse_amount(lot.starting_price)
    )
    return amount if amount <= who.budget_cents else None


def report_own(name: str, frame: dict[str, Any]) -> None:
    """Bidders speak only about their own refusals and lost leads."""
    if frame.get("type") == "rejected":
        say(name, f"refused ({frame['reason']}): {frame['message']}")
    elif frame.get("type") == "outbid":
        say(name, f"outbid by {frame['by']} at {frame['amount']}")


async def expect_ok(client: BidderClient, kind: str, **fields: Any) -> dict[str, Any]:
    reply = await client.request(kind, **fields)
    if reply["type"] != "accepted":
        raise RuntimeError(f"{kind} was refused: {reply}")
    return reply


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------ main


async def run_demo(config: DemoConfig) -> int:
    shutil.rmtree(config.output, ignore_errors=True)
    config.output.mkdir(parents=True)
    host_key = secrets.token_urlsafe(12)
    cafile = config.output / "data" / "cert.pem"
    recording = config.output / "lot.mp4"
    viewer_lines: list[str] = []

    async with trio.open_nursery() as nursery:
        auction_port, signaling_port, server = await start_server(
            nursery, config, host_key
        )
        url = f"wss://localhost:{auction_port}/"
        signaling = f"wss://localhost:{signaling_port}/"
        say("demo", f"server up: auction {url}, video signaling {signaling}")

        video: list[trio.Process] = []
        if config.video:
            video.append(
                await start_process(
                    nursery,
                    [
                        PYTHON,
                        "-m",
                        "bidwar.host",
                        "--signaling",
                        signaling,
                        "--host-key",
                        host_key,
                        "--cafile",
                        str(cafile),
                        "--camera",
                        "fake",
                        "--size",
                        "640x480",
                        "--fps",
                        "30",
                        "--report-interval",
                        "0",
                    ],
                    lambda line: say("camera", line),
                )
            )
            video.append(
                await start_process(
                    nursery,
                    [
                        PYTHON,
                        "-m",
                        "bidwar.viewer",
                        "--signaling",
                        signaling,
                        "--cafile",
                        str(cafile),
                        "--headless",
                        "--record",
                        str(recording),
                        "--report-interval",
                        "5",
                    ],
                    lambda line: (viewer_lines.append(line), say("viewer", line)),
                )
            )

        done = trio.Event()
        outcome: dict[str, Any] = {}

        async def run_auctioneer() -> None:
            outcome.update(await auctioneer(url, cafile, host_key, config, done))

        async with trio.open_nursery() as war:
            war.start_soon(run_auctioneer)
            for who in BIDDERS:
                war.start_soon(bidder, url, cafile, who, done)

        for process in reversed(video):
            await stop(process)
        server_code = await stop(server)
        say("demo", f"server stopped (exit code {server_code})")

    audit_code = await audit(config.output / "data")
    print_summary(outcome, viewer_lines, recording, config)
    return audit_code


def print_summary(
    outcome: dict[str, Any],
    viewer_lines: list[str],
    recording: Path,
    config: DemoConfig,
) -> None:
    print()
    if outcome.get("outcome") == "sold":
        print(
            f"WINNER: {outcome['winner']} at {outcome['price']} "
            f"after {outcome['bid_count']} bids"
        )
    else:
        print("The lot passed without bids.")
    if config.video:
        finals = [line for line in viewer_lines if line.startswith("[final]")]
        print(f"VIDEO: {finals[-1] if finals else 'no final figures from the viewer'}")
        size = recording.stat().st_size if recording.exists() else 0
        print(f"RECORDING: {recording} ({size} bytes)")


async def audit(data_dir: Path) -> int:
    """Verify the journal the server wrote and print its lot results."""
    print()
    completed = await trio.run_process(
        [PYTHON, "-m", "bidwar.audit", "--data-dir", str(data_dir)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = completed.stdout or completed.stderr
    print(output.decode(errors="replace").rstrip())
    return completed.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a live bid war on loopback.")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("demo-output"),
        help="where the journal and the recording go",
    )
    parser.add_argument(
        "--lot-seconds", type=int, default=20, help="lot duration before extensions"
    )
    parser.add_argument("--extension-s", type=int, default=5, help="soft-close window")
    parser.add_argument(
        "--no-video", action="store_true", help="skip the camera and the viewer"
    )
    args = parser.parse_args()
    config = DemoConfig(
        args.output, args.lot_seconds, args.extension_s, not args.no_video
    )
    return trio.run(run_demo, config)


if __name__ == "__main__":
    sys.exit(main())
