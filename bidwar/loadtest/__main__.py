"""``python -m bidwar.loadtest``: drive a server with many bidders, check it."""

import json
import logging
import sys

import trio

from bidwar import tls
from bidwar.loadtest.config import LoadConfig, parse_args
from bidwar.loadtest.host import HostError
from bidwar.loadtest.invariants import check_run
from bidwar.loadtest.report import render
from bidwar.loadtest.runner import run_load
from bidwar.logs import setup_logging

log = logging.getLogger("bidwar.loadtest")

EXIT_FAILED = 1
EXIT_CANNOT_RUN = 2


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; 0 when every invariant held."""
    config = parse_args(argv)
    setup_logging(config.verbose)
    return run_and_report(config)


def run_and_report(config: LoadConfig) -> int:
    failure: BaseException | None = None
    try:
        result = trio.run(run_load, config)
    except* (HostError, tls.TLSSetupError, OSError) as group:
        # Nurseries deliver these inside an exception group.
        failure = group.exceptions[0]
    if failure is not None:
        log.error("cannot run the load test: %s", failure)
        return EXIT_CANNOT_RUN

    checks = check_run(result)
    print(render(result, checks), flush=True)
    if config.json_path is not None:
        config.json_path.write_text(json.dumps(result.to_json(checks), indent=2) + "\n")
    return 0 if all(check.ok for check in checks) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
