"""``python -m bidwar.bidder``: bid, chat and host from a terminal or a pipe.

Reads one command per line from standard input while printing what happens
in the auction as it happens.  At the end of input it waits for the replies
to everything it sent, then leaves cleanly, so a script can pipe a list of
commands in and read every outcome out.  Type ``help`` for the commands.
"""

import argparse
import dataclasses
import functools
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import trio

from bidwar import money, tls
from bidwar.client import BidderClient, ClientConfig, ConnectionLost, JoinRefused
from bidwar.logs import setup_logging
from bidwar.render import render_frame, render_status
from bidwar.session_store import SessionStore, default_state_dir

log = logging.getLogger("bidwar.bidder")

HELP = """\
commands:
  bid <amount>                 bid, e.g. bid 12.50
  message <text>               chat to everyone
  status                       the lot, price, leader, time left, host, counts
  host_request [key]           become the host (key from --host-key by default)
  host_release                 stop being the host
  quit                         leave
  help                         this text
host only:
  open [--sudden-death] [--increment X] [--extension S] <price> <seconds> <title...>
  close | pause | resume       end the lot now / freeze / restart the countdown
  increment <amount>           change the minimum raise"""

ENDING_SOON_MARKS_S = (10, 5, 3)


class CommandError(Exception):
    """A typed command is not valid; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class BidderConfig:
    url: str
    name: str
    cafile: Path | None
    insecure: bool
    json_output: bool
    host_key: str | None
    state_dir: Path
    resume: bool


def parse_command(line: str, host_key: str | None) -> tuple[str, dict[str, Any]] | None:
    """Turn one typed line into (request type, fields); None for a blank line.

    Raises :class:`CommandError` for anything the server should never see.
    """
    words = line.strip().split(maxsplit=1)
    if not words:
        return None
    verb, rest = words[0].lower(), (words[1] if len(words) > 1 else "")

    if verb == "bid":
        return "bid", {"amount": _amount(rest)}
    if verb == "message":
        if not rest.strip():
            raise CommandError("usage: message <text>")
        return "message", {"text": rest}
    if verb == "host_request":
        key = rest.strip() or host_key
        if not key:
            raise CommandError("usage: host_request <key> (or start with --host-key)")
        return "host_request", {"key": key}
    if verb == "increment":
        return "increment", {"amount": _amount(rest)}
    if verb == "open":
        return "open", _open_fields(rest)
    if verb in ("close", "pause", "resume", "host_release", "status"):
        if rest.strip():
            raise CommandError(f"{verb} takes no arguments")
        return verb, {}
    raise CommandError(f"unknown command {verb!r}: type help")


def _amount(text: str) -> str:
    text = text.strip()
    try:
        money.parse_amount(text)
    except money.AmountError as error:
        raise CommandError(str(error)) from None
    return text


def _open_fields(rest: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="open", add_help=False, exit_on_error=False)
    parser.add_argument("--sudden-death", action="store_true")
    parser.add_argument("--increment")
    parser.add_argument("--extension", type=int)
    parser.add_argument("starting_price")
    parser.add_argument("seconds", type=int)
    parser.add_argument("title", nargs="+")
    try:
        args = parser.parse_args(shlex.split(rest))
    except (argparse.ArgumentError, ValueError, SystemExit):
        raise CommandError(
            "usage: open [--sudden-death] [--increment X] [--extension S] "
            "<starting-price> <seconds> <title...>"
        ) from None

    fields: dict[str, Any] = {
        "title": " ".join(args.title),
        "starting_price": _amount(args.starting_price),
        "duration_s": args.seconds,
        "sudden_death": args.sudden_death,
    }
    if args.increment is not None:
        fields["increment"] = _amount(args.increment)
    if args.extension is not None:
        fields["extension_s"] = args.extension
    return fields


class Terminal:
    """Prints the auction for a person, or raw JSON lines for a script."""

    def __init__(self, client_name: str, json_output: bool, out: TextIO = sys.stdout):
        self._name = client_name
        self._json = json_output
        self._out = out

    @property
    def json_output(self) -> bool:
        return self._json

    def frame(self, frame: dict[str, Any], client: BidderClient) -> None:
        if self._json:
            self._print(json.dumps(frame, separators=(",", ":")))
            return
        text = render_frame(frame, client.view, self._name, _now_ms())
        if text:
            self._print(text)

    def note(self, text: str) -> None:
        """A line about this client itself (errors, reconnects, help)."""
        if self._json:
            print(text, file=sys.stderr, flush=True)
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        print(text, file=self._out, flush=True)


async def run_bidder(config: BidderConfig, stdin: TextIO = sys.stdin) -> int:
    """Join, then run commands from ``stdin`` until it ends or says quit."""
    context = None
    if config.url.startswith("wss:"):
        context = tls.client_context(config.cafile, insecure=config.insecure)

    terminal = Terminal(config.name, config.json_output)
    sessions = SessionStore(config.state_dir)
    saved_session = None
    if config.resume:
        # File I/O, so off the trio thread like every other blocking call.
        saved_session = await trio.to_thread.run_sync(
            sessions.load, config.url, config.name
        )
    client = BidderClient(
        ClientConfig(
            url=config.url,
            name=config.name,
            ssl_context=context,
            session=saved_session,
        ),
        on_frame=lambda frame: terminal.frame(frame, client),
        on_status=terminal.note,
    )

    failure = ""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await trio.to_thread.run_sync(
                sessions.save, config.url, config.name, client.session
            )
            nursery.start_soon(_announce_ending_soon, client, terminal)
            await _command_loop(client, terminal, config, stdin, nursery)
            await client.drain()
            await client.close()
            nursery.cancel_scope.cancel()
    except* JoinRefused as group:
        failure = f"cannot join: {group.exceptions[0]}"
    except* ConnectionLost as group:
        failure = f"disconnected: {group.exceptions[0]}"
    if failure:
        terminal.note(failure)
        return 1
    return 0


async def _command_loop(
    client: BidderClient,
    terminal: Terminal,
    config: BidderConfig,
    stdin: TextIO,
    nursery: trio.Nursery,
) -> None:
    while True:
        # A worker thread reads the blocking stream; abandoning it on
        # cancellation keeps Ctrl-C prompt even while a terminal waits.
        line = await trio.to_thread.run_sync(stdin.readline, abandon_on_cancel=True)
        if not line or line.strip().lower() == "quit":
            return
        if line.strip().lower() == "help":
            terminal.note(HELP)
            continue
        try:
            parsed = parse_command(line, config.host_key)
        except CommandError as error:
            terminal.note(f"error: {error}")
            continue
        if parsed is None:
            continue
        kind, fields = parsed
        if kind == "status" and not config.json_output:
            nursery.start_soon(_show_status, client, terminal)
        else:
            nursery.start_soon(functools.partial(client.request, kind, **fields))


async def _show_status(client: BidderClient, terminal: Terminal) -> None:
    reply = await client.request("status")
    if reply["type"] == "accepted":
        client.view.apply({"type": "snapshot", **reply["result"]})
        terminal.note(render_status(client.view, _now_ms()))


async def _announce_ending_soon(client: BidderClient, terminal: Terminal) -> None:
    """Say "ending soon" as the countdown passes 10, 5 and 3 seconds.

    Only a countdown that *passes* a mark is announced: a bid that extends
    the lot to exactly 10 s has already been reported as an extension.
    """
    previous_ms: int | None = None
    while True:
        # Polling a local display, not waiting for an event: a half-second
        # tick is as precise as a person reading a terminal needs.
        await trio.sleep(0.5)
        lot, remaining = client.view.lot, client.view.remaining_ms(_now_ms())
        if lot is None or lot.state != "open" or remaining is None:
            previous_ms = None
            continue
        for mark_s in ENDING_SOON_MARKS_S:
            passed = (
                previous_ms is not None and previous_ms > mark_s * 1000 >= remaining
            )
            if passed and remaining > 0 and not terminal.json_output:
                terminal.note(
                    f"[lot {lot.lot}] ending soon: {remaining / 1000:.0f} s left"
                )
                break
        previous_ms = remaining


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_args(argv: list[str] | None = None) -> tuple[BidderConfig, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bidwar.bidder",
        description="Join a bidwar auction; commands are read from standard input.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default="wss://localhost:8765/",
        help="auction service URL (default wss://localhost:8765/)",
    )
    parser.add_argument(
        "--name", required=True, help="your bidder name (1-32 characters)"
    )
    parser.add_argument(
        "--cafile",
        type=Path,
        help="trust this certificate (the server's data-dir/cert.pem)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (unsafe)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print every server frame as one JSON line"
    )
    parser.add_argument(
        "--host-key",
        default=os.environ.get("BIDWAR_HOST_KEY"),
        help="key used by host_request (also $BIDWAR_HOST_KEY)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="come back as the bidder this machine last was under --name "
        "(with the session token saved then), taking over if still connected",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where session tokens are kept, so a bidder can come back under "
        "the same name (default: $XDG_STATE_HOME/bidwar)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.cafile and args.insecure:
        parser.error("--cafile and --insecure contradict each other")

    config = BidderConfig(
        url=args.url,
        name=args.name,
        cafile=args.cafile,
        insecure=args.insecure,
        json_output=args.json,
        host_key=args.host_key,
        state_dir=args.state_dir,
        resume=args.resume,
    )
    return config, args.verbose


def main(argv: list[str] | None = None) -> int:
    config, verbose = parse_args(argv)
    setup_logging(verbose)
    if config.insecure:
        print(
            "warning: --insecure: the server's identity is NOT checked", file=sys.stderr
        )
    code = 0
    try:
        code = trio.run(run_bidder, config)
    except* KeyboardInterrupt:
        code = 130  # Ctrl-C: leave quietly, as a shell command does
    except* tls.TLSSetupError as group:
        print(f"error: {group.exceptions[0]}", file=sys.stderr)
        code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
