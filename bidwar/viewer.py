"""``python -m bidwar.viewer``: watch the host's live video.

Parses the command line into one frozen config, sets up logging and runs
``bidwar.media.watcher.Watcher`` under ``trio.run``, printing its figures
every few seconds and at exit. A window opens when a display exists and
``--headless`` is not given. A lost signaling connection (the server
restarting) is joined again, keeping the figures and the recording. Exit
codes: 0 normally (including Ctrl-C), 1 when signaling refuses us, cannot be
joined at start or ends the connection for good, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from bidwar import tls
from bidwar.logs import setup_logging
from bidwar.media.cli import add_connection_options
from bidwar.media.display import display_available
from bidwar.media.signaling_client import SignalingError
from bidwar.media.terminate import run_until_terminated
from bidwar.media.viewer_stats import ViewerStats
from bidwar.media.watcher import Watcher, WatcherConfig

log = logging.getLogger("bidwar.viewer")

EXIT_SIGNALING = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class ViewerOptions:
    watcher: WatcherConfig
    cafile: Path | None
    insecure: bool
    verbose: bool


def parse_args(argv: list[str] | None = None) -> ViewerOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bidwar.viewer", description="Watch the host's live video."
    )
    parser.add_argument("--signaling", required=True, help="wss://HOST:8766/")
    parser.add_argument("--record", type=Path, help="also write the video to FILE.mp4")
    parser.add_argument("--frames", type=_positive, help="stop after N frames")
    parser.add_argument("--headless", action="store_true", help="never open a window")
    add_connection_options(parser)
    args = parser.parse_args(argv)

    watcher = WatcherConfig(
        signaling_url=args.signaling,
        room=args.room,
        frames=args.frames,
        record=args.record,
        display=not args.headless and display_available(),
        report_interval_s=args.report_interval or None,
    )
    return ViewerOptions(watcher, args.cafile, args.insecure, args.verbose)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    setup_logging(options.verbose)
    try:
        ssl_context = tls.client_context(options.cafile, insecure=options.insecure)
    except tls.TLSSetupError as error:
        print(f"bidwar.viewer: {error}", file=sys.stderr)
        return EXIT_USAGE

    watcher = Watcher(options.watcher, ssl_context=ssl_context, on_report=_print)
    try:
        trio.run(run_until_terminated, watcher.run)
    except KeyboardInterrupt:
        pass
    except SignalingError as error:
        print(f"bidwar.viewer: {error}", file=sys.stderr)
        return EXIT_SIGNALING
    finally:
        _print(watcher.stats, final=True)
    return 0


def _print(stats: ViewerStats, final: bool = False) -> None:
    label = "final" if final else "so far"
    print(f"[{label}] {stats.summary()}", flush=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
