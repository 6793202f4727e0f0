"""Summaries of the runs: medians, percentiles, ratios, the printed table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    side: str
    schema: str
    jobs: int
    enqueue_s: float
    execute_s: float
    exit_s: float
    worker_cpu_s: float
    startup_s: float
    latencies_ms: list[float] = field(default_factory=list)
    #: Peak RSS in kB: the largest of the execute phase's processes, the latency worker.
    execute_rss_kb: int = 0
    latency_rss_kb: int = 0
    #: When the execute phase first saw a job done (seconds from its start), and how many
    #: were left then.
    first_done_s: float = 0.0
    left_at_first: int = 0

    @property
    def steady_jobs_per_s(self) -> float | None:
        """The drain after start-up: from the first job seen done to the empty table."""
        span = self.execute_s - self.first_done_s
        return self.left_at_first / span if self.left_at_first and span > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "schema": self.schema,
            "jobs": self.jobs,
            "enqueue_s": round(self.enqueue_s, 4),
            "enqueue_jobs_per_s": round(self.jobs / self.enqueue_s, 1),
            "execute_s": round(self.execute_s, 4),
            "execute_jobs_per_s": round(self.jobs / self.execute_s, 1),
            "first_done_s": round(self.first_done_s, 4),
            "left_at_first": self.left_at_first,
            "steady_jobs_per_s": None
            if self.steady_jobs_per_s is None
            else round(self.steady_jobs_per_s, 1),
            "all_exited_s": round(self.exit_s, 4),
            "worker_cpu_s": round(self.worker_cpu_s, 3),
            "startup_s": round(self.startup_s, 4),
            "latencies_ms": [round(x, 3) for x in self.latencies_ms],
            "execute_peak_rss_kb": self.execute_rss_kb,
            "latency_peak_rss_kb": self.latency_rss_kb,
        }


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def median_of(values: Iterable[float | None]) -> float | None:
    """The median of the values that were measured (None if none was)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(runs: list[Run]) -> dict[str, float | None]:
    latencies = [x for run in runs for x in run.latencies_ms]
    summary: dict[str, float | None] = {
        "execute_jobs_per_s": statistics.median(r.jobs / r.execute_s for r in runs),
        "steady_jobs_per_s": median_of(r.steady_jobs_per_s for r in runs),
        "enqueue_jobs_per_s": statistics.median(r.jobs / r.enqueue_s for r in runs),
        "worker_cpu_s": statistics.median(r.worker_cpu_s for r in runs),
        "startup_s": statistics.median(r.startup_s for r in runs),
        "peak_rss_mb": statistics.median(
            max(r.execute_rss_kb, r.latency_rss_kb) / 1024 for r in runs
        ),
        "latency_avg_ms": None,
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "latency_max_ms": None,
    }
    if latencies:
        summary.update(
            latency_avg_ms=statistics.fmean(latencies),
            latency_p50_ms=percentile(latencies, 0.50),
            latency_p95_ms=percentile(latencies, 0.95),
            latency_max_ms=max(latencies),
        )
    return summary


COLUMNS = (
    ("execute_jobs_per_s", "execute jobs/s", "{:,.0f}"),
    ("steady_jobs_per_s", "after start jobs/s", "{:,.0f}"),
    ("enqueue_jobs_per_s", "enqueue jobs/s", "{:,.0f}"),
    ("worker_cpu_s", "worker CPU s", "{:.2f}"),
    ("startup_s", "startup s", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("latency_avg_ms", "lat avg ms", "{:.2f}"),
    ("latency_p50_ms", "lat p50 ms", "{:.2f}"),
    ("latency_p95_ms", "lat p95 ms", "{:.2f}"),
    ("latency_max_ms", "lat max ms", "{:.2f}"),
)


def ratios(summaries: dict[str, dict[str, float | None]], theirs: str) -> dict[str, float | None]:
    """pgworker's summary over ``theirs`` (a side, or the SQL floor), column by column."""
    if "pgworker" not in summaries or theirs not in summaries:
        return {}
    out: dict[str, float | None] = {}
    for key, _, _ in COLUMNS:
        mine, other = summaries["pgworker"].get(key), summaries[theirs].get(key)
        out[key] = mine / other if mine is not None and other else None
    return out


def rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {key: None if value is None else round(value, 3) for key, value in values.items()}


def render_table(
    header: str,
    summaries: dict[str, dict[str, float | None]],
    ratio_rows: dict[str, dict[str, float | None]],
) -> str:
    rows = [["", *(title for _, title, _ in COLUMNS)]]
    for name, summary in summaries.items():
        cells = [name]
        for key, _, fmt in COLUMNS:
            value = summary.get(key)
            cells.append("-" if value is None else fmt.format(value))
        rows.append(cells)
    for label, ratio in ratio_rows.items():
        if ratio:
            rows.append(
                [label]
                + ["-" if ratio[key] is None else f"{ratio[key]:.2f}x" for key, _, _ in COLUMNS]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
    return "\n".join(lines)


LEGEND = (
    "execute = jobs / seconds from starting the processes to an empty table (start-up "
    "included); after start = the same drain from the first job seen done (polled every "
    "20 ms) to the empty table, without start-up; enqueue = jobs / seconds of defer_many "
    "(pgworker) or addJobs (Node) calls; "
    "SQL floor = pgbench, prepared statements: execute = claim N (SKIP LOCKED) + delete in a "
    "second transaction, N = the batch pgworker claims, at the same concurrency; enqueue = "
    "1,000-row inserts, one client; worker CPU = user+system seconds of the processes; "
    "peak RSS = the largest ru_maxrss of one worker process; a ratio > 1 means pgworker is "
    "faster in jobs/s, and uses more CPU, memory or time in the other columns."
)
