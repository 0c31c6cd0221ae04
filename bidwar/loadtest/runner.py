"""One load-test run from start to finish: host, workers, lot, figures.

The run goes through fixed phases, each bounded in time:

1. the host joins, claims the host role and closes any lot left open;
2. worker processes join every bidder (at most ``join_window_s``);
3. the host opens the lot; bidders bid for ``duration_s`` (the ``snipe`` lot
   ends by itself, everything else is closed by the host on time);
4. bidders collect their last replies and leave; the journal is read and
   ``bidwar.audit`` run when a data directory is given.

The lot itself is how the phases reach the workers: bidders start when they
see it open and stop when they see it close, so no extra channel is needed.
"""

import dataclasses
import logging
import time
from pathlib import Path

import trio

from bidwar import tls
from bidwar.loadtest import journal_check, scenarios
from bidwar.loadtest.config import LoadConfig
from bidwar.loadtest.host import Host
from bidwar.loadtest.metrics import GroupTally
from bidwar.loadtest.processes import (
    Progress,
    WorkerJob,
    WorkerResult,
    run_workers,
    split_plans,
)
from bidwar.loadtest.progress import ProgressDisplay
from bidwar.loadtest.results import RunResult
from bidwar.loadtest.server_memory import RssSampler
from bidwar.loadtest.wire_client import Target

log = logging.getLogger("bidwar.loadtest")

# Slack after the lot for the last replies, the close handshake and draining.
WIND_DOWN_S = 45.0
CLOSE_WAIT_S = 15.0


async def run_load(config: LoadConfig) -> RunResult:
    """Run the load described by ``config`` and return what was measured.

    Raises :class:`~bidwar.loadtest.host.HostError` (or a connection error)
    when the host cannot join, before any bidder is started.
    """
    scenario = scenarios.SCENARIOS[config.scenario]
    result = RunResult(
        scenario=scenario.name,
        bidders=config.bidders,
        processes=config.processes,
        offered_rate=config.rate if scenario.bids else 0.0,
        config=_public(config),
    )
    host = Host(f"{config.run_id}-host", config.host_key, _target(config))
    result.host = host.record
    memory = RssSampler(config.server_pid)
    display = ProgressDisplay(
        config.bidders, config.duration_s, enabled=config.progress
    )
    started = time.monotonic()

    try:
        # Every phase has its own bound; this one catches a host connection
        # that dies mid-request, so the run always ends and reports.
        with trio.move_on_after(_run_for_s(config, scenario) + 2 * CLOSE_WAIT_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(host.serve)
                nursery.start_soon(memory.run)
                memory.mark("before")
                await _run_phases(config, scenario, host, result, memory, display)
                nursery.cancel_scope.cancel()
    finally:
        display.close()

    result.elapsed_s = round(time.monotonic() - started, 2)
    result.server_rss_mb = memory.figures()
    if config.data_dir is not None:
        await _read_journal(config, result)
    return result


async def _run_phases(
    config: LoadConfig,
    scenario: scenarios.Scenario,
    host: Host,
    result: RunResult,
    memory: RssSampler,
    display: ProgressDisplay,
) -> None:
    everyone_joined = trio.Event()

    def on_progress(report: Progress) -> None:
        display.update(report)
        settled = display.total("joined") + display.total("gave_up")
        if settled >= config.bidders:
            everyone_joined.set()

    jobs = _jobs(config, scenario)
    async with trio.open_nursery() as nursery:
        worker_results: list[WorkerResult] = []

        async def workers() -> None:
            worker_results.extend(
                await run_workers(jobs, on_progress, timeout_s=jobs[0].run_for_s + 15)
            )
            everyone_joined.set()  # even if they died before joining

        nursery.start_soon(workers)
        join_started = time.monotonic()
        with trio.move_on_after(config.join_window_s):
            await everyone_joined.wait()
        result.join_s = round(time.monotonic() - join_started, 2)
        memory.mark("joined")
        await _drive_lot(config, scenario, host, result, display)
        memory.mark("lot over")
    _merge(result, worker_results)


async def _drive_lot(
    config: LoadConfig,
    scenario: scenarios.Scenario,
    host: Host,
    result: RunResult,
    display: ProgressDisplay,
) -> None:
    await host.open_lot(
        scenarios.open_request(scenario, config.duration_s, config.run_id)
    )
    display.bidding_started()
    opened = time.monotonic()

    if scenario.natural_end:
        # Bidders stop after the overtime; the last extension then runs out.
        limit = scenarios.bidding_window_s(scenario, config.duration_s)
        ended = await host.wait_closed(limit + scenario.extension_s + CLOSE_WAIT_S)
        if not ended:
            log.warning("the soft-close lot did not end by itself: closing it")
    else:
        await trio.sleep(config.duration_s)
    result.bidding_s = round(time.monotonic() - opened, 2)
    await host.close_lot()
    if not await host.wait_closed(CLOSE_WAIT_S):
        log.error("no lot_closed event for lot %s", host.record.lot)


def _jobs(config: LoadConfig, scenario: scenarios.Scenario) -> list[WorkerJob]:
    plans = scenarios.plan_bidders(
        scenario,
        run_id=config.run_id,
        bidders=config.bidders,
        rate=config.rate,
        slow_share=config.slow_share,
        seed=config.seed,
    )
    run_for_s = _run_for_s(config, scenario)
    return [
        WorkerJob(
            index=index,
            plans=share,
            scenario=scenario,
            url=config.url,
            cafile=config.cafile,
            insecure=config.insecure,
            duration_s=config.duration_s,
            run_for_s=run_for_s,
            connect_concurrency=config.connect_concurrency,
            slow_mode=config.slow_mode,
            churn_every_s=config.churn_every_s,
            log_level=logging.DEBUG if config.verbose else logging.WARNING,
        )
        for index, share in enumerate(split_plans(plans, config.processes))
    ]


def _run_for_s(config: LoadConfig, scenario: scenarios.Scenario) -> float:
    """How long a worker may run at most, joins to last reply."""
    return (
        config.join_window_s
        + scenarios.bidding_window_s(scenario, config.duration_s)
        + scenario.extension_s
        + WIND_DOWN_S
    )


def _merge(result: RunResult, worker_results: list[WorkerResult]) -> None:
    result.normal, result.slow = GroupTally(), GroupTally()
    for worker in worker_results:
        result.normal.merge(worker.normal)
        result.slow.merge(worker.slow)
        result.joined += worker.joined
        result.gave_up += worker.gave_up
        if worker.error:
            result.worker_errors.append(f"worker {worker.index}: {worker.error}")


async def _read_journal(config: LoadConfig, result: RunResult) -> None:
    assert config.data_dir is not None
    result.journal = await trio.to_thread.run_sync(
        journal_check.read_journal, config.data_dir, result.lot
    )
    result.audit = await journal_check.run_audit(config.data_dir)


def _target(config: LoadConfig) -> Target:
    if config.url.startswith("ws://"):
        return Target(config.url, None)
    return Target(
        config.url, tls.client_context(config.cafile, insecure=config.insecure)
    )


def _public(config: LoadConfig) -> dict:
    """The config for the JSON report, without the host key."""
    figures = dataclasses.asdict(config)
    figures.pop("host_key")
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in figures.items()
    }
