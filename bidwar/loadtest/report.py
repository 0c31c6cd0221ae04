"""The table printed at the end of a run."""

from typing import Any

from bidwar.loadtest.invariants import Check
from bidwar.loadtest.metrics import GroupTally
from bidwar.loadtest.results import RunResult


def render(result: RunResult, checks: list[Check]) -> str:
    """The run's figures and invariants as aligned plain-text rows."""
    rows: list[tuple[str, str]] = []
    rows += _run_rows(result)
    rows += _group_rows("bidders", result.normal)
    if result.slow.clients:
        rows += _group_rows("slow bidders (not in the figures above)", result.slow)
    rows += _server_rows(result)
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" if value else label for label, value in rows]

    lines.append("")
    lines.append("invariants")
    for check in checks:
        lines.append(
            f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}"
        )
    return "\n".join(lines)


def _run_rows(result: RunResult) -> list[tuple[str, str]]:
    host = result.host
    closed = host.closed or {}
    return [
        ("run", ""),
        ("  scenario", f"{result.scenario}, {result.bidders} bidders "
                       f"in {result.processes} process(es)"),
        ("  offered", f"{result.offered_rate:g} bids/s for {result.bidding_s} s"),
        ("  joined", f"{result.joined} in {result.join_s} s "
                     f"({result.gave_up} gave up)"),
        ("  lot", f"{host.lot}: {closed.get('outcome')} to {closed.get('winner')} "
                  f"at {closed.get('price')} after {len(host.bids)} bids, "
                  f"{host.extensions} extensions"),
    ]  # fmt: skip


def _group_rows(title: str, tally: GroupTally) -> list[tuple[str, str]]:
    figures = tally.summary()
    per_client = figures["messages_per_client"]
    rows = [
        (title, ""),
        ("  clients", f"{tally.clients}"),
        ("  connections", f"{tally.connections_made} made, {tally.connections_failed} "
                          f"failed, {tally.reconnects} reconnects"),
        ("  requests sent", _counts(dict(tally.sent)) + f" ({tally.resent} resent)"),
        ("  bids accepted", str(figures["bids_accepted"])),
        ("  bids rejected", _counts(figures["bids_rejected"]) or "0"),
        ("  ack latency", _latency(figures["ack_ms"])),
        ("  broadcast latency", _latency(figures["broadcast_ms"])),
        ("  frames per client", f"min {per_client['min']}  mean {per_client['mean']}  "
                                f"max {per_client['max']}"),
        ("  resyncs", str(tally.resyncs)),
        ("  disconnects", _counts(dict(tally.closes)) or "none"),
    ]  # fmt: skip
    chats = {key: n for key, n in tally.replies.items() if key.startswith("message:")}
    if chats:
        rows.insert(6, ("  chat replies", _counts(chats)))
    return rows


def _server_rows(result: RunResult) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("server", "")]
    if result.server_rss_mb:
        rows.append(("  memory (RSS MB)", _counts(result.server_rss_mb)))
    if result.audit is not None:
        audit = result.audit
        verdict = "not available" if not audit.available else f"exit {audit.exit_code}"
        rows.append(("  bidwar.audit", verdict))
    if result.journal is not None:
        rows.append(("  journal records", str(result.journal.records)))
    return rows if len(rows) > 1 else []


def _latency(figures: dict[str, Any]) -> str:
    if not figures["count"]:
        return "no samples"
    return (
        f"p50 {figures['p50_ms']} ms  p95 {figures['p95_ms']}  p99 {figures['p99_ms']}"
        f"  max {figures['max_ms']}  (n={figures['count']})"
    )


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
