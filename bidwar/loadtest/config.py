"""Command-line options of ``python -m bidwar.loadtest``, as one frozen config."""

import argparse
import dataclasses
import os
import secrets
from pathlib import Path

from bidwar.loadtest.scenarios import SCENARIOS

HOST_KEY_ENV = "BIDWAR_HOST_KEY"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """One load-test run; durations in seconds, rates in bids per second."""

    url: str
    host_key: str
    bidders: int = 100
    processes: int = 2
    duration_s: float = 20.0
    rate: float = 200.0
    scenario: str = "war"
    cafile: Path | None = None
    insecure: bool = False
    json_path: Path | None = None
    data_dir: Path | None = None
    server_pid: int | None = None
    slow_share: float = 0.1
    slow_mode: str = "never"
    churn_every_s: float = 3.0
    connect_concurrency: int = 64
    # The longest the bidders may take to join before the lot opens anyway.
    join_window_s: float = 180.0
    seed: int = 0
    run_id: str = dataclasses.field(default_factory=lambda: "lt" + secrets.token_hex(3))
    progress: bool = True
    verbose: bool = False


def parse_args(argv: list[str] | None = None) -> LoadConfig:
    """Parse ``argv``; exit with a usage message when it makes no sense."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    return LoadConfig(
        url=args.url,
        host_key=args.host_key,
        bidders=args.bidders,
        processes=args.processes or os.cpu_count() or 1,
        duration_s=args.duration,
        rate=args.rate,
        scenario=args.scenario,
        cafile=args.cafile,
        insecure=args.insecure,
        json_path=args.json,
        data_dir=args.data_dir,
        server_pid=args.server_pid,
        slow_share=args.slow_share,
        slow_mode=args.slow_mode,
        churn_every_s=args.churn_every,
        connect_concurrency=args.connect_concurrency,
        join_window_s=args.join_window,
        seed=args.seed,
        progress=not args.no_progress,
        verbose=args.verbose,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bidwar.loadtest",
        description=(
            "Drive a bidwar server with many real bidders over TLS WebSockets, "
            "measure latencies and check the auction's invariants. "
            "Exits 1 when an invariant fails, 2 when the run could not start."
        ),
    )
    add = parser.add_argument
    add(
        "--url",
        required=True,
        help="auction service, e.g. wss://127.0.0.1:8765/ (loopback only)",
    )
    add("--bidders", type=int, default=100, help="simulated bidders (default 100)")
    add(
        "--processes",
        type=int,
        default=0,
        help="worker processes (default: number of cores)",
    )
    add("--duration", type=float, default=20.0, help="seconds of bidding (default 20)")
    add(
        "--rate",
        type=float,
        default=200.0,
        help="bids per second offered in total (default 200)",
    )
    add(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="war",
        help="what the bidders do (default war)",
    )
    add(
        "--cafile",
        type=Path,
        help="trust this certificate authority (e.g. DATA_DIR/cert.pem)",
    )
    add("--insecure", action="store_true", help="do not verify the server certificate")
    add(
        "--host-key",
        default=os.environ.get(HOST_KEY_ENV),
        help=f"the server's host key (also ${HOST_KEY_ENV})",
    )
    add("--json", type=Path, help="write every figure to this file")
    add(
        "--data-dir",
        type=Path,
        help="the server's data directory: check the journal and run bidwar.audit",
    )
    add("--server-pid", type=int, help="sample this process's memory (RSS)")
    add(
        "--slow-share",
        type=float,
        default=0.1,
        help="slow scenario: share of bidders that do not read (default 0.1)",
    )
    add(
        "--slow-mode",
        choices=("never", "slow"),
        default="never",
        help="slow scenario: never read, or read 5 frames/s",
    )
    add(
        "--churn-every",
        type=float,
        default=3.0,
        help="churn scenario: mean seconds between reconnects (default 3)",
    )
    add(
        "--connect-concurrency",
        type=int,
        default=64,
        help="first connections in flight per process (default 64)",
    )
    add(
        "--join-window",
        type=float,
        default=180.0,
        help="longest wait for all bidders to join before the lot opens (default 180)",
    )
    add(
        "--seed",
        type=int,
        default=0,
        help="seed for pacing and slow-bidder choice (default 0)",
    )
    add("--no-progress", action="store_true", help="no progress bar")
    add("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.host_key:
        parser.error(f"--host-key (or ${HOST_KEY_ENV}) is needed to open a lot")
    if not args.url.startswith(("wss://", "ws://")):
        parser.error("--url must be a ws:// or wss:// URL")
    if _url_host(args.url) not in LOOPBACK_HOSTS:
        parser.error("the load test only targets this machine (127.0.0.1 / localhost)")
    if args.cafile and args.insecure:
        parser.error("--cafile and --insecure exclude each other")
    if args.bidders < 1 or args.duration <= 0 or args.rate < 0:
        parser.error("--bidders must be ≥ 1, --duration > 0 and --rate ≥ 0")
    if not 0 <= args.slow_share < 1:
        parser.error("--slow-share must be in [0, 1)")


def _url_host(url: str) -> str:
    rest = url.split("://", 1)[1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[: rest.index("]") + 1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest
