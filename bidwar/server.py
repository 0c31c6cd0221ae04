"""``python -m bidwar.server``: the auction and signaling services in one process.

One ``trio.run``; a root nursery supervises the journal writer, the auction
service, the signaling service, the lot clock and the presence updates.
Ctrl-C or SIGTERM cancels the root: connections are closed with code 1001,
queued journal writes are flushed, and the process exits 0.
"""

import argparse
import dataclasses
import ipaddress
import logging
import os
import secrets
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bidwar import core, journal, tls
from bidwar.auction_service import AuctionServiceConfig, serve_auction
from bidwar.clock import ServerClock
from bidwar.group_commit import GroupCommitter
from bidwar.logs import setup_logging
from bidwar.room import AuctionRoom, RoomConfig
from bidwar.signaling import SignalingConfig, serve_signaling

log = logging.getLogger("bidwar.server")

HOST_KEY_ENV = "BIDWAR_HOST_KEY"
SESSION_SECRET_FILE = "session.secret"
HOST_KEY_FILE = "host.key"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path("bidwar-data")
    host_key: str = ""
    tls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A ready-made context (tests, embedding) instead of the files above.
    ssl_context: ssl.SSLContext | None = None
    auction: AuctionServiceConfig = AuctionServiceConfig()
    signaling: SignalingConfig = SignalingConfig()
    max_chat_chars: int = 500
    rules: core.Rules = core.Rules()


@dataclasses.dataclass(frozen=True)
class RunningServer:
    """What ``run_server`` reports once it is listening."""

    auction_port: int
    signaling_port: int
    room: AuctionRoom


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


async def run_server(
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run both services until cancelled; ``started()`` once both listen.

    Raises :class:`StartupError` (or a :class:`journal.JournalError`) when the
    data directory, the journal or the certificate cannot be used.
    """
    ssl_context = await trio.to_thread.run_sync(_server_ssl_context, config)
    secret = await trio.to_thread.run_sync(_session_secret, config.data_dir)
    store = await trio.to_thread.run_sync(journal.SqliteStore.open, config.data_dir)
    try:
        recovery = await trio.to_thread.run_sync(store.load)
        # One chat limit for the protocol check and the rules engine.
        rules = dataclasses.replace(config.rules, max_chat_chars=config.max_chat_chars)
        durable = _replay(rules, recovery.records)
        clock = ServerClock()
        committer = GroupCommitter(store)

        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            recovered = await _journal_recovery(
                durable, committer, clock, store.last_at_ms
            )
            history = [record.body for record in recovery.records] + recovered

            room = AuctionRoom(
                RoomConfig(
                    host_key=config.host_key,
                    session_secret=secret,
                    max_chat_chars=config.max_chat_chars,
                    rules=rules,
                ),
                clock,
                committer,
                durable,
                replay=history,
            )
            await nursery.start(room.run_clock)
            await nursery.start(room.run_presence)
            auction_port = await nursery.start(
                lambda task_status: serve_auction(
                    config.auction,
                    room,
                    ssl_context=ssl_context,
                    task_status=task_status,
                )
            )
            signaling_port = await nursery.start(
                lambda task_status: serve_signaling(
                    config.signaling,
                    ssl_context=ssl_context,
                    host_key=config.host_key,
                    on_viewers_changed=room.set_viewers,
                    task_status=task_status,
                )
            )
            task_status.started(RunningServer(auction_port, signaling_port, room))
    finally:
        # Shielded: this runs during cancellation, and the lock on the data
        # directory must be released even then.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)


def _replay(rules: core.Rules, records: list[journal.Record]) -> core.Auction:
    auction = core.Auction(rules)
    for record in records:
        auction.apply(core.event_from_dict(record.body))
    if records:
        log.info("rebuilt the auction from %d journal records", len(records))
    return auction


async def _journal_recovery(
    durable: core.Auction,
    committer: GroupCommitter,
    clock: ServerClock,
    last_at_ms: int | None,
) -> list[dict[str, Any]]:
    """Pause a lot that was open at the crash, release the host, durably.

    Returns the events this added to the journal.
    """
    if last_at_ms is None:
        return []
    events = durable.recover(clock.now_ms(), last_at_ms)
    records = [core.event_to_dict(event) for event in events]
    if records:
        await committer.commit(records)
        log.info("recovered after a stop: %s", ", ".join(r["type"] for r in records))
    return records


def _server_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    if config.ssl_context is not None:
        return config.ssl_context
    if config.tls_cert is not None:
        return tls.server_context(config.tls_cert, config.tls_key or config.tls_cert)
    cert_path, key_path = tls.ensure_self_signed(config.data_dir)
    return tls.server_context(cert_path, key_path)


def _session_secret(data_dir: Path) -> bytes:
    """The key that signs session tokens: made once, kept with the journal."""
    secret, _ = load_or_create_secret(
        data_dir / SESSION_SECRET_FILE, lambda: secrets.token_bytes(32)
    )
    return secret


def load_or_create_secret(path: Path, make: Callable[[], bytes]) -> tuple[bytes, bool]:
    """Read the secret at ``path``, or create it (owner-only) with ``make()``.

    Returns (secret, whether it was just created).  Raises StartupError when
    the data directory cannot hold it.
    """
    try:
        return path.read_bytes(), False
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise StartupError(
            f"cannot write to the data directory {path.parent}: {error}"
        ) from None
    secret = make()
    with os.fdopen(descriptor, "wb") as file:
        file.write(secret)
    return secret, True


# ------------------------------------------------------------------ the CLI


def parse_args(argv: list[str] | None = None) -> tuple[ServerConfig, bool]:
    """Return (config, verbose); an empty host key means "use the stored one"."""
    parser = argparse.ArgumentParser(
        prog="python -m bidwar.server",
        description="Run the bidwar auction service and the video signaling service.",
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="auction port (default 8765)"
    )
    parser.add_argument(
        "--signaling-port",
        type=int,
        default=8766,
        help="video signaling port (default 8766)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("bidwar-data"),
        help="journal, certificate and secrets (default ./bidwar-data)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        help="certificate chain (PEM); default: self-signed, in the data directory",
    )
    parser.add_argument("--tls-key", type=Path, help="private key (PEM) for --tls-cert")
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="plain ws:// (refused unless bound to a loopback address)",
    )
    parser.add_argument(
        "--host-key",
        default=os.environ.get(HOST_KEY_ENV),
        help=f"the key that makes a bidder the host (also ${HOST_KEY_ENV}); "
        "default: made once, kept in the data directory and printed at start",
    )
    parser.add_argument(
        "--max-chat-chars",
        type=int,
        default=500,
        help="longest chat message (default 500)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=16 * 1024,
        help="largest frame a client may send (default 16384)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    if args.no_tls and not _is_loopback(args.bind):
        parser.error("--no-tls is only allowed with a loopback --bind address")
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")

    config = ServerConfig(
        data_dir=args.data_dir,
        host_key=args.host_key or "",
        tls=not args.no_tls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auction=AuctionServiceConfig(
            bind=args.bind, port=args.port, max_message_bytes=args.max_message_bytes
        ),
        signaling=SignalingConfig(bind=args.bind, port=args.signaling_port),
        max_chat_chars=args.max_chat_chars,
    )
    return config, args.verbose


def _with_stored_host_key(config: ServerConfig) -> ServerConfig:
    """Use the data directory's host key, making one on first start.

    Kept on disk so that after a crash the host can take the paused lot back
    with the key it already has.
    """
    path = config.data_dir / HOST_KEY_FILE
    key, created = load_or_create_secret(
        path, lambda: secrets.token_urlsafe(12).encode("ascii")
    )
    origin = "new, saved in" if created else "from"
    print(f"host key ({origin} {path}): {key.decode()}", flush=True)
    return dataclasses.replace(config, host_key=key.decode())


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def _serve_until_signalled(config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            running = await nursery.start(run_server, config)
            log.info(
                "ready: auction port %d, signaling port %d",
                running.auction_port,
                running.signaling_port,
            )
            async for signum in signals:
                log.info(
                    "%s received: closing connections and flushing the journal",
                    signal.Signals(signum).name,
                )
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    config, verbose = parse_args(argv)
    setup_logging(verbose)
    if not config.host_key:
        try:
            config = _with_stored_host_key(config)
        except StartupError as error:
            log.error("cannot start: %s", error)
            return 2
    failure: BaseException | None = None
    try:
        trio.run(_serve_until_signalled, config)
    except* (StartupError, journal.JournalError, tls.TLSSetupError, OSError) as group:
        # The nursery delivers start-up errors inside an exception group.
        failure = group.exceptions[0]
    if failure is not None:
        log.error("cannot start: %s", failure)
        return 2
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
