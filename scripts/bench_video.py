"""Benchmark live video: one host, 1/5/10/20 viewers, all on this machine.

    python scripts/bench_video.py [--viewers 1,5,10,20] [--seconds 10]

The benchmark process runs the signaling service (TLS, a throwaway
self-signed certificate) and starts:

- the host: ``python -m bidwar.host --camera fake`` (640x480, 30 fps);
- viewer "farms": this script with ``--farm N``, each running N viewers
  (``bidwar.media.watcher.Watcher``) in one process, so that twenty viewers
  do not cost twenty interpreters. Viewers are split over ``--farms``
  processes to use both cores.

For each viewer count it waits for every viewer's first frame, then measures
for ``--seconds``: the host's CPU (percent of one core), each viewer's
received frame rate, time to first frame (join to first decoded frame; the
host is already streaming, so these are late joiners), and glass-to-glass
latency from the capture stamp in the pixels (host and viewers share this
machine's clock).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import psutil
import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bidwar import tls  # noqa: E402
from bidwar.signaling import SignalingConfig, serve_signaling  # noqa: E402

HOST_KEY = "bench-host-key"
HOST_REPORT = re.compile(r"encoding ([0-9.]+) fps")
FIRST_FRAME_TIMEOUT_S = 30.0


def main() -> int:
    args = _parse_args()
    if args.farm:
        return trio.run(_run_farm, args)
    return trio.run(_run_bench, args)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", default="1,5,10,20")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate-kbps", type=int, default=1000)
    parser.add_argument("--farms", type=int, default=2, help="viewer processes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    # Internal: run as a viewer farm.
    parser.add_argument("--farm", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--cafile", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


# -- the benchmark ----------------------------------------------------------------


async def _run_bench(args: argparse.Namespace) -> int:
    counts = [int(part) for part in args.viewers.split(",")]
    load_before = os.getloadavg()[0]  # other work on the machine, not ours
    with tempfile.TemporaryDirectory() as data:
        cert, key = tls.ensure_self_signed(Path(data))
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(
                    serve_signaling,
                    SignalingConfig(port=0),
                    ssl_context=tls.server_context(cert, key),
                    host_key=HOST_KEY,
                )
            )
            url = f"wss://127.0.0.1:{port}/"
            host_log = Path(data) / "host.log"
            host = _start_host(url, cert, args, host_log)
            try:
                results = []
                for n in counts:
                    result = await _measure(n, url, cert, host, args)
                    result["host_encode_fps"] = _host_fps(host_log, args.seconds)
                    results.append(result)
            finally:
                host.terminate()
                host.wait(10)
            nursery.cancel_scope.cancel()

    _print_table(results, args, load_before)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _start_host(
    url: str, cert: Path, args: argparse.Namespace, log: Path
) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "bidwar.host", "--signaling", url,
        "--host-key", HOST_KEY, "--camera", "fake", "--size", args.size,
        "--fps", str(args.fps), "--cafile", str(cert), "--report-interval", "1",
        "--bitrate-kbps", str(args.bitrate_kbps),
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, stderr=log.open("w"))


def _host_fps(log: Path, seconds: float) -> float | None:
    # The host logs its encoding rate every second; average the last window.
    rates = [float(m.group(1)) for m in HOST_REPORT.finditer(log.read_text())]
    window = rates[-max(1, int(seconds) - 1) :]
    return round(statistics.fmean(window), 1) if window else None


async def _measure(
    viewers: int, url: str, cert: Path, host: subprocess.Popen, args: argparse.Namespace
) -> dict:
    farms = _split(viewers, args.farms)
    command = [sys.executable, __file__, "--url", url, "--cafile", str(cert)]
    command += ["--seconds", str(args.seconds)]
    pipe = {"stdout": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen([*command, "--farm", str(n)], **pipe) for n in farms]

    # Each farm prints "ready" once all its viewers have a picture, then
    # measures for --seconds; measure the host over the same window.
    for process in processes:
        line = await trio.to_thread.run_sync(process.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"a viewer farm failed to start: {line!r}")
    host_process = psutil.Process(host.pid)
    host_process.cpu_percent()
    farm_processes = [psutil.Process(p.pid) for p in processes]
    for farm in farm_processes:
        farm.cpu_percent()
    await trio.sleep(args.seconds)
    host_cpu = host_process.cpu_percent()
    farm_cpu = sum(farm.cpu_percent() for farm in farm_processes)

    per_viewer = []
    for process in processes:
        output, _ = await trio.to_thread.run_sync(process.communicate)
        per_viewer += json.loads(output)
    return _summarise(viewers, host_cpu, farm_cpu, per_viewer)


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


def _summarise(viewers: int, host_cpu: float, farm_cpu: float, rows: list) -> dict:
    fps = [row["fps"] for row in rows]
    first = [row["time_to_first_frame_s"] for row in rows]
    latencies = [value for row in rows for value in row["latencies_ms"]]
    latencies.sort()
    return {
        "viewers": viewers,
        "host_cpu_percent": round(host_cpu, 1),
        "viewer_processes_cpu_percent": round(farm_cpu, 1),
        "fps_min": round(min(fps), 1),
        "fps_mean": round(statistics.fmean(fps), 1),
        "first_frame_s_max": round(max(first), 2),
        "first_frame_s_mean": round(statistics.fmean(first), 2),
        "latency_p50_ms": _percentile(latencies, 50),
        "latency_p95_ms": _percentile(latencies, 95),
        "unstamped_frames": sum(row["unreadable_stamps"] for row in rows),
    }


def _percentile(ordered: list[float], percent: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, round(percent / 100 * len(ordered)))])


def _print_table(results: list[dict], args: argparse.Namespace, load: float) -> None:
    print(
        f"\n{args.size} at {args.fps} fps and {args.bitrate_kbps} kbit/s, "
        f"{args.seconds:.0f} s per row, "
        f"{os.cpu_count()} CPUs, load average before the run {load:.1f}\n"
    )
    print(
        "| viewers | host CPU % | host encode fps | viewer procs CPU % | "
        "fps min / mean | first frame mean / max | glass-to-glass p50 / p95 |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['viewers']} | {r['host_cpu_percent']} | {r['host_encode_fps']} | "
            f"{r['viewer_processes_cpu_percent']} | {r['fps_min']} / {r['fps_mean']} | "
            f"{r['first_frame_s_mean']} s / {r['first_frame_s_max']} s | "
            f"{r['latency_p50_ms']} / {r['latency_p95_ms']} ms |"
        )


# -- a viewer farm ------------------------------------------------------------------


async def _run_farm(args: argparse.Namespace) -> int:
    from bidwar.media.watcher import Watcher, WatcherConfig

    context = tls.client_context(args.cafile)
    watchers = [
        Watcher(WatcherConfig(args.url), ssl_context=context) for _ in range(args.farm)
    ]
    async with trio.open_nursery() as nursery:
        for watcher in watchers:
            nursery.start_soon(watcher.run)
        with trio.fail_after(FIRST_FRAME_TIMEOUT_S):
            while not all(watcher.stats.frames for watcher in watchers):
                await trio.sleep(0.05)
        print("ready", flush=True)

        # Measure only the window: start-up frames would flatter nobody.
        start_frames = [watcher.stats.frames for watcher in watchers]
        for watcher in watchers:
            watcher.stats.latencies_ms.clear()
        started = time.monotonic()
        await trio.sleep(args.seconds)
        elapsed = time.monotonic() - started
        rows = [
            _farm_row(watcher, frames, elapsed)
            for watcher, frames in zip(watchers, start_frames, strict=True)
        ]
        nursery.cancel_scope.cancel()
    print(json.dumps(rows), flush=True)
    return 0


def _farm_row(watcher, start_frames: int, elapsed_s: float) -> dict:
    stats = watcher.stats
    return {
        "fps": (stats.frames - start_frames) / elapsed_s,
        "time_to_first_frame_s": stats.time_to_first_frame_s,
        "latencies_ms": list(stats.latencies_ms),
        "unreadable_stamps": stats.unreadable_stamps,
        "size": [stats.width, stats.height],
    }


if __name__ == "__main__":
    sys.exit(main())
