"""``python -m bidwar.host``: publish live video of the lot to viewers.

Parses the command line into one frozen config, sets up logging and runs
``bidwar.media.publisher.Publisher`` under ``trio.run``. A lost signaling
connection (the server restarting) is joined again while the camera keeps
running. Exit codes: 0 after Ctrl-C, 1 when signaling refuses us, cannot be
joined at start or ends the connection for good, 2 for a bad camera or
arguments.
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
from bidwar.media.camera import CameraError, default_camera_spec, open_camera
from bidwar.media.cli import add_connection_options
from bidwar.media.publisher import Publisher, PublisherConfig
from bidwar.media.signaling_client import SignalingError
from bidwar.media.terminate import run_until_terminated

log = logging.getLogger("bidwar.host")

EXIT_SIGNALING = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class HostOptions:
    publisher: PublisherConfig
    camera: str
    cafile: Path | None
    insecure: bool
    verbose: bool


def parse_args(argv: list[str] | None = None) -> HostOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bidwar.host", description="Publish live video to viewers."
    )
    parser.add_argument("--signaling", required=True, help="wss://HOST:8766/")
    parser.add_argument("--host-key", required=True, help="the server's host key")
    parser.add_argument(
        "--camera",
        default=default_camera_spec(),
        help="'fake' (test pattern), a device index, or a video file to loop",
    )
    parser.add_argument("--size", type=_size, default=(640, 480), help="WIDTHxHEIGHT")
    parser.add_argument(
        "--fps", type=int, default=30, choices=range(1, 61), metavar="1-60"
    )
    parser.add_argument("--bitrate-kbps", type=int, default=1000)
    add_connection_options(parser)
    args = parser.parse_args(argv)

    width, height = args.size
    publisher = PublisherConfig(
        signaling_url=args.signaling,
        host_key=args.host_key,
        room=args.room,
        width=width,
        height=height,
        fps=args.fps,
        bitrate_bps=args.bitrate_kbps * 1000,
        report_interval_s=args.report_interval or None,
    )
    return HostOptions(publisher, args.camera, args.cafile, args.insecure, args.verbose)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    setup_logging(options.verbose)
    config = options.publisher

    try:
        camera = open_camera(options.camera, (config.width, config.height), config.fps)
        ssl_context = tls.client_context(options.cafile, insecure=options.insecure)
    except (CameraError, tls.TLSSetupError) as error:
        print(f"bidwar.host: {error}", file=sys.stderr)
        return EXIT_USAGE

    try:
        publisher = Publisher(config, camera, ssl_context=ssl_context)
        trio.run(run_until_terminated, publisher.run)
    except KeyboardInterrupt:
        log.info("stopped")
    except SignalingError as error:
        print(f"bidwar.host: {error}", file=sys.stderr)
        return EXIT_SIGNALING
    except CameraError as error:
        print(f"bidwar.host: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        camera.close()
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, got {text!r}"
        ) from None
    if not (16 <= width <= 3840 and 16 <= height <= 2160) or width % 2 or height % 2:
        raise argparse.ArgumentTypeError("sizes are even, from 16x16 to 3840x2160")
    return width, height


if __name__ == "__main__":
    sys.exit(main())
