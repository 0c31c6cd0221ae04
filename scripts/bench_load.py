"""Benchmark the auction service under load with ``python -m bidwar.loadtest``.

Each run gets a fresh server (a subprocess, TLS on, a new data directory on
a free port), so one run's connections, journal or crash cannot colour the
next.  The runs:

* ``war`` at 100, 1,000 and 2,000 bidders, 200 bids/s offered;
* ``slow`` at 1,000 bidders, 10 % of them never reading;
* ``idle`` at 1,000 bidders, for the server's memory.

Prints a summary, writes every run's JSON to ``--out`` and draws p50/p99 of
the acknowledgement and broadcast latency against bidders into ``--plot``.

    /work/venv/bin/python scripts/bench_load.py [--duration 20] [--quick]
"""

import argparse
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"ready: auction port (\d+)")
SERVER_START_TIMEOUT_S = 30
TARGETS = {
    "p99 ack at 200 bids/s (ms)": 50,
    "p99 broadcast at 200 bids/s (ms)": 100,
    "slow readers raise the others' p99 by less than (%)": 20,
    "server RSS with 1,000 idle bidders (MB)": 200,
}


def main() -> int:
    args = _parse_args()
    if args.replot is not None:
        _plot(json.loads(args.replot.read_text())["runs"], args.plot)
        return 0
    runs = _plan(args)
    results = []
    for label, options in runs:
        print(f"--- {label}: {' '.join(options)}", flush=True)
        result = _run_with_fresh_server(options, args)
        result["label"] = label
        results.append(result)
        print(_one_line(result), flush=True)

    report = {"machine": _machine(), "duration_s": args.duration, "runs": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(_summary(results))
    _plot(results, args.plot)
    print(f"\nwrote {args.out} and {args.plot}")
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of bidding"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="bids/s offered")
    parser.add_argument(
        "--sizes", default="100,1000,2000", help="bidders in the war runs"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-load.json"))
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "load-latency.png")
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs")
    parser.add_argument(
        "--replot", type=Path, help="only redraw the plot from this JSON"
    )
    return parser.parse_args()


def _plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    sizes = [int(size) for size in args.sizes.split(",")]
    slow_size = 1000
    if args.quick:
        sizes, slow_size, args.duration = [20, 50], 50, 5.0
    common = ["--duration", str(args.duration), "--rate", str(args.rate)]
    runs = [
        (f"war {n}", ["--bidders", str(n), "--scenario", "war", *common]) for n in sizes
    ]
    slow = ["--scenario", "slow", "--slow-share", "0.1"]
    idle = ["--scenario", "idle", "--duration", "10"]
    runs.append((f"slow {slow_size}", ["--bidders", str(slow_size), *slow, *common]))
    runs.append((f"idle {slow_size}", ["--bidders", str(slow_size), *idle]))
    return runs


def _run_with_fresh_server(options: list[str], args: argparse.Namespace) -> dict:
    """Start a server, run the load test against it, stop the server."""
    host_key = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        data_dir = Path(scratch) / "data"
        json_path = Path(scratch) / "run.json"
        server, port = _start_server(data_dir, host_key, Path(scratch) / "server.log")
        try:
            command = [
                sys.executable, "-m", "bidwar.loadtest",
                "--url", f"wss://127.0.0.1:{port}/",
                "--cafile", str(data_dir / "cert.pem"),
                "--host-key", host_key,
                "--data-dir", str(data_dir),
                "--server-pid", str(server.pid),
                "--json", str(json_path),
                "--no-progress",
                *options,
            ]  # fmt: skip
            started = time.monotonic()
            load = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            result = json.loads(json_path.read_text()) if json_path.exists() else {}
            result["wall_s"] = round(time.monotonic() - started, 1)
            result["exit_code"] = load.returncode
            result["table"] = load.stdout
            result["server_alive"] = server.poll() is None
            if load.returncode not in (0, 1):
                result["stderr_tail"] = load.stderr[-3000:]
        finally:
            _stop(server)
            result["server_log_tail"] = _tail(Path(scratch) / "server.log")
    return result


def _start_server(data_dir: Path, host_key: str, log_path: Path):
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "bidwar.server", "--data-dir", str(data_dir),
         "--port", "0", "--signaling-port", "0", "--host-key", host_key],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = READY.search(log_path.read_text())
        if match:
            return server, int(match[1])
        if server.poll() is not None:
            break
        time.sleep(0.1)
    _stop(server)
    raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-2000:]}")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------ output


def _figure(result: dict, *keys: str):
    value = result
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _one_line(result: dict) -> str:
    normal = result.get("normal", {})
    failed = [c["name"] for c in result.get("invariants", []) if not c["ok"]]
    return (
        f"joined {result.get('joined')}/{result.get('bidders')} "
        f"in {result.get('join_s')} s; "
        f"bids sent {normal.get('sent', {}).get('bid', 0)}, "
        f"accepted {normal.get('bids_accepted')}; "
        f"ack p50/p99 {_figure(normal, 'ack_ms', 'p50_ms')}/"
        f"{_figure(normal, 'ack_ms', 'p99_ms')} ms; "
        f"broadcast p50/p99 {_figure(normal, 'broadcast_ms', 'p50_ms')}/"
        f"{_figure(normal, 'broadcast_ms', 'p99_ms')} ms; "
        f"resyncs {normal.get('resyncs')}; RSS {result.get('server_rss_mb')}; "
        f"exit {result.get('exit_code')}; server alive {result.get('server_alive')}"
        + (f"; FAILED {failed}" if failed else "")
    )


def _summary(results: list[dict]) -> str:
    header = (
        f"{'run':<12} {'joined':>7} {'join s':>7} {'bids':>6} {'acc':>5} "
        f"{'ack p50':>8} {'ack p99':>8} {'bc p50':>8} {'bc p99':>8} "
        f"{'resync':>6} {'RSS MB':>7} {'ok':>3}"
    )
    lines = [header]
    for result in results:
        normal = result.get("normal", {})
        lines.append(
            f"{result['label']:<12} {result.get('joined', '-')!s:>7} "
            f"{result.get('join_s', '-')!s:>7} "
            f"{normal.get('sent', {}).get('bid', 0):>6} "
            f"{normal.get('bids_accepted', '-')!s:>5} "
            f"{_figure(normal, 'ack_ms', 'p50_ms')!s:>8} "
            f"{_figure(normal, 'ack_ms', 'p99_ms')!s:>8} "
            f"{_figure(normal, 'broadcast_ms', 'p50_ms')!s:>8} "
            f"{_figure(normal, 'broadcast_ms', 'p99_ms')!s:>8} "
            f"{normal.get('resyncs', '-')!s:>6} "
            f"{_figure(result, 'server_rss_mb', 'peak')!s:>7} "
            f"{'yes' if result.get('passed') else 'NO':>3}"
        )
    return "\n".join(lines)


def _plot(results: list[dict], path: Path) -> None:
    wars = sorted(
        (r for r in results if r.get("scenario") == "war" and r.get("normal")),
        key=lambda r: r["bidders"],
    )
    if not wars:
        return
    bidders = [r["bidders"] for r in wars]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for kind, colour in (("ack_ms", "tab:blue"), ("broadcast_ms", "tab:orange")):
        for p, style in (("p50_ms", "--"), ("p99_ms", "-")):
            values = [_figure(r, "normal", kind, p) for r in wars]
            label = f"{kind.removesuffix('_ms')} {p.removesuffix('_ms')}"
            axis.plot(bidders, values, style, marker="o", color=colour, label=label)
    axis.axhline(50, color="tab:blue", linewidth=0.8, alpha=0.5, label="ack p99 target")
    axis.axhline(
        100, color="tab:orange", linewidth=0.8, alpha=0.5, label="broadcast p99 target"
    )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("bidders (log)")
    axis.set_ylabel("latency, ms (log)")
    rate = wars[0].get("offered_rate")
    axis.set_title(
        f"bidwar: latency vs bidders at {rate:g} bids/s offered (TLS, 2 cores)"
    )
    axis.legend(fontsize="small")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_end": os.getloadavg(),
    }


if __name__ == "__main__":
    sys.exit(main())
