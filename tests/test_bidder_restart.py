"""A terminal bidder rides out a server restart and sees everything it missed.

Real processes and real time: the server is stopped and started again on the
same port and data directory while ``python -m bidwar.bidder --json`` stays
connected through it; meanwhile a second bidder posts chat the first one
cannot see until it is back.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bidwar import tls
from bidwar.client import BidderClient, ClientConfig

READY = re.compile(rb"ready: auction port (\d+), signaling port (\d+)")

pytestmark = pytest.mark.slow


async def start_server(
    nursery: trio.Nursery, data_dir: Path, port: int
) -> tuple[trio.Process, int]:
    command = [
        sys.executable, "-m", "bidwar.server", "--data-dir", str(data_dir),
        "--port", str(port), "--signaling-port", "0", "--host-key", "k",
    ]  # fmt: skip
    process = await nursery.start(
        lambda task_status: trio.run_process(
            command, stderr=subprocess.PIPE, check=False, task_status=task_status
        )
    )
    output = b""
    with trio.fail_after(30):
        async for chunk in process.stderr:
            output += chunk
            if match := READY.search(output):
                break
    nursery.start_soon(drain, process.stderr)
    return process, int(match.group(1))


async def drain(stream: trio.abc.ReceiveStream) -> None:
    async for _ in stream:
        pass


async def stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        await process.wait()


async def say(url: str, cafile: Path, name: str, text: str) -> None:
    client = BidderClient(
        ClientConfig(url=url, name=name, ssl_context=tls.client_context(cafile))
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        reply = await client.request("message", text=text)
        assert reply["type"] == "accepted", reply
        await client.close()
        nursery.cancel_scope.cancel()


async def test_a_terminal_bidder_resumes_after_a_server_restart(tmp_path):
    data_dir = tmp_path / "data"
    frames: list[dict] = []
    got_frame = trio.Event()

    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery, data_dir, 0)
        url = f"wss://localhost:{port}/"
        cafile = data_dir / "cert.pem"

        # The bidder's stdin stays open (a pipe we never close) so it keeps
        # running; it prints every frame as JSON on stdout.
        read_end, write_end = os.pipe()
        bidder = await nursery.start(
            lambda task_status: trio.run_process(
                [sys.executable, "-m", "bidwar.bidder", "--url", url, "--name", "ann",
                 "--cafile", str(cafile), "--json"],
                stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                check=False, task_status=task_status,
            )
        )  # fmt: skip
        os.close(read_end)

        async def read_frames() -> None:
            buffer = b""
            async for chunk in bidder.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    frames.append(json.loads(line))
                    got_frame.set()

        async def wait_for(predicate) -> None:
            nonlocal got_frame
            with trio.fail_after(30):
                while not any(predicate(frame) for frame in frames):
                    got_frame = trio.Event()
                    await got_frame.wait()

        async def wait_for_chat(text: str) -> None:
            await wait_for(lambda frame: frame.get("text") == text)

        nursery.start_soon(read_frames)
        nursery.start_soon(drain, bidder.stderr)

        await wait_for(lambda frame: frame.get("type") == "snapshot")
        await say(url, cafile, "bob", "before the restart")
        await wait_for_chat("before the restart")

        await stop(server)
        server, _ = await start_server(nursery, data_dir, port)
        await say(url, cafile, "cat", "while ann was reconnecting")
        await wait_for_chat("while ann was reconnecting")

        os.close(write_end)  # end of input: the bidder leaves cleanly
        with trio.fail_after(15):
            assert await bidder.wait() == 0
        await stop(server)

    notices = ("accepted", "rejected", "snapshot", "presence")
    sequenced = [f["seq"] for f in frames if "seq" in f and f["type"] not in notices]
    assert sequenced == list(range(sequenced[0], sequenced[-1] + 1))
    snapshots = [f for f in frames if f.get("type") == "snapshot"]
    assert len(snapshots) == 1, "the resume should replay, not resync"
