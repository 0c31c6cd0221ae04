"""Command-line options the host and the viewer share."""

import argparse
from pathlib import Path


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Options for reaching the signaling service and reporting progress."""
    parser.add_argument("--room", default="main", help="room name (default main)")
    parser.add_argument("--cafile", type=Path, help="trust this certificate")
    parser.add_argument(
        "--insecure", action="store_true", help="do not check the server's certificate"
    )
    parser.add_argument(
        "--report-interval",
        type=float,
        default=5.0,
        help="seconds between status lines (0: none)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
