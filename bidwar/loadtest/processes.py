"""The process fan-out: bidders spread over worker processes, one trio each.

One Python process cannot drive thousands of TLS connections and keep up with
the frames they receive on one core, so the bidders are split over worker
processes (``multiprocessing`` with *spawn*: no state is inherited by
accident).  Each worker runs one ``trio.run`` with a nursery of bidder tasks.

Workers talk to the parent over one queue: ``("progress", Progress)`` every
half second, then ``("result", WorkerResult)`` once all of their bidders have
finished.  The parent sets a shared *abort* event to make every worker stop
early (Ctrl-C, a host failure); workers then still report what they saw.
A worker is bounded by its job's ``run_for_s`` on its own, and the parent
terminates a worker (by its handle) that outlives the parent's timeout.
"""

import dataclasses
import logging
import multiprocessing
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bidwar import tls
from bidwar.loadtest.bidder import Bidder, Crowd
from bidwar.loadtest.metrics import GroupTally
from bidwar.loadtest.scenarios import BidderPlan, Scenario
from bidwar.loadtest.wire_client import Target

log = logging.getLogger("bidwar.loadtest")

PROGRESS_INTERVAL_S = 0.5
ABORT_POLL_S = 0.2
JOIN_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """Everything one worker needs; it pickles, so it crosses ``spawn``."""

    index: int
    plans: tuple[BidderPlan, ...]
    scenario: Scenario
    url: str
    cafile: Path | None
    insecure: bool
    duration_s: float
    run_for_s: float
    connect_concurrency: int = 64
    slow_mode: str = "never"
    churn_every_s: float = 3.0
    log_level: int = logging.WARNING


@dataclasses.dataclass
class Progress:
    index: int
    joined: int = 0
    gave_up: int = 0
    bids_sent: int = 0
    bids_accepted: int = 0
    messages: int = 0


@dataclasses.dataclass
class WorkerResult:
    index: int
    normal: GroupTally
    slow: GroupTally
    joined: int = 0
    gave_up: int = 0
    error: str | None = None


def split_plans(
    plans: list[BidderPlan], processes: int
) -> list[tuple[BidderPlan, ...]]:
    """Deal bidders round-robin so that slow bidders spread evenly too."""
    count = max(1, min(processes, len(plans)))
    return [tuple(plans[index::count]) for index in range(count)]


# ------------------------------------------------------------- the parent side


async def run_workers(
    jobs: list[WorkerJob],
    on_progress: Callable[[Progress], None],
    *,
    timeout_s: float,
    abort: Any = None,
) -> list[WorkerResult]:
    """Run one process per job; return their results in job order.

    Returns after every worker reported or ``timeout_s`` passed; a worker that
    died or hung is reported as a result with ``error`` set.  Cancelling this
    call sets the abort event and still reaps every process.
    """
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    abort = abort if abort is not None else context.Event()
    processes = [
        context.Process(
            target=worker_main,
            args=(job, channel, abort),
            name=f"bidwar-loadtest-{job.index}",
            daemon=True,
        )
        for job in jobs
    ]
    for process in processes:
        process.start()

    results: dict[int, WorkerResult] = {}
    try:
        with trio.move_on_after(timeout_s):
            await _collect(channel, processes, results, on_progress, len(jobs))
    finally:
        abort.set()
        with trio.CancelScope(shield=True):
            await _reap(processes)
    return [
        results.get(job.index)
        or WorkerResult(job.index, GroupTally(), GroupTally(), error="no result")
        for job in jobs
    ]


async def _collect(
    channel: Any,
    processes: list[Any],
    results: dict[int, WorkerResult],
    on_progress: Callable[[Progress], None],
    expected: int,
) -> None:
    while len(results) < expected:
        message = await trio.to_thread.run_sync(
            _get_or_none, channel, abandon_on_cancel=True
        )
        if message is None:
            if not any(process.is_alive() for process in processes):
                return  # everybody is gone; a missing result is an error
            continue
        kind, payload = message
        if kind == "progress":
            on_progress(payload)
        else:
            results[payload.index] = payload


def _get_or_none(channel: Any) -> Any:
    try:
        return channel.get(timeout=ABORT_POLL_S)
    except queue.Empty:
        return None


async def _reap(processes: list[Any]) -> None:
    for process in processes:
        await trio.to_thread.run_sync(process.join, JOIN_TIMEOUT_S)
        if process.is_alive():
            log.warning("worker %s did not stop: terminating it", process.name)
            process.terminate()
            await trio.to_thread.run_sync(process.join, JOIN_TIMEOUT_S)


# -------------------------------------------------------------- the worker side


def worker_main(job: WorkerJob, channel: Any, abort: Any) -> None:
    """Entry point of a worker process: run the job, send back the result."""
    logging.basicConfig(
        level=job.log_level,
        format=f"%(asctime)s %(levelname)-7s %(name)s[w{job.index}]: %(message)s",
    )
    try:
        result = trio.run(run_worker, job, channel, abort)
    except KeyboardInterrupt:
        result = WorkerResult(
            job.index, GroupTally(), GroupTally(), error="interrupted"
        )
    channel.put(("result", result))


async def run_worker(job: WorkerJob, channel: Any, abort: Any) -> WorkerResult:
    """Run every bidder of ``job`` to the end; never raises."""
    crowd = Crowd(
        target=_target(job),
        scenario=job.scenario,
        duration_s=job.duration_s,
        deadline=trio.current_time() + job.run_for_s,
        connect_limiter=trio.CapacityLimiter(job.connect_concurrency),
        slow_mode=job.slow_mode,
        churn_every_s=job.churn_every_s,
    )
    result = WorkerResult(job.index, GroupTally(), GroupTally())
    bidders = [
        Bidder(plan, crowd, result.slow if plan.slow else result.normal)
        for plan in job.plans
    ]

    try:
        async with trio.open_nursery() as services:
            services.start_soon(
                _report_progress, job.index, crowd, result.normal, bidders, channel
            )
            services.start_soon(_watch_abort, abort, services.cancel_scope)
            async with trio.open_nursery() as everyone:
                for bidder in bidders:
                    everyone.start_soon(bidder.run)
            services.cancel_scope.cancel()
    except Exception as error:  # reported, not lost with the process
        log.exception("worker %d failed", job.index)
        result.error = repr(error)

    result.joined, result.gave_up = crowd.joined, crowd.gave_up
    return result


def _target(job: WorkerJob) -> Target:
    if job.url.startswith("ws://"):
        return Target(job.url, None)
    return Target(job.url, tls.client_context(job.cafile, insecure=job.insecure))


async def _report_progress(
    index: int, crowd: Crowd, normal: GroupTally, bidders: list[Bidder], channel: Any
) -> None:
    while True:
        progress = Progress(
            index=index,
            joined=crowd.joined,
            gave_up=crowd.gave_up,
            bids_sent=normal.sent["bid"],
            bids_accepted=normal.replies["bid:accepted"],
            messages=sum(bidder.messages for bidder in bidders),
        )
        channel.put(("progress", progress))
        await trio.sleep(PROGRESS_INTERVAL_S)


async def _watch_abort(abort: Any, scope: trio.CancelScope) -> None:
    # Polled rather than waited on in a thread: a thread blocked on the event
    # could not be cancelled when the worker ends normally.
    while not abort.is_set():
        await trio.sleep(ABORT_POLL_S)
    scope.cancel()
