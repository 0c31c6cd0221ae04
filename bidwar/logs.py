"""Logging set-up shared by every ``python -m bidwar.*`` entry point."""

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """INFO lifecycle lines to stderr (DEBUG with ``verbose``), one per line."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # aiortc and the WebSocket library are chatty at INFO; their
        # warnings still come through.
        for noisy in ("aioice", "aiortc", "asyncio", "trio-websocket", "libav"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
