"""The fault run's table (plain text) and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from faults.harness import Result, Settings

COLUMNS = (
    ("fault", 18),
    ("jobs", 5),
    ("in flight", 9),
    ("lost", 4),
    ("dup runs", 8),
    ("back in s", 9),
    ("caught up s", 11),
    ("before/s", 8),
    ("during/s", 8),
    ("after/s", 7),
    ("p95 wait ms b/d/a", 20),
    ("ok", 3),
)


def _wait(values: dict[str, float | None]) -> str:
    return "/".join(
        "-" if values.get(k) is None else f"{values[k]:.0f}" for k in ("before", "during", "after")
    )


def table(results: Sequence[Result]) -> str:
    """One row per fault, then its notes and problems indented under it."""
    header = " ".join(
        name.rjust(width) if i else name.ljust(width) for i, (name, width) in enumerate(COLUMNS)
    )
    lines = [header, "-" * len(header)]
    for r in results:
        cells = (
            r.fault,
            r.jobs,
            r.in_flight_at_start,
            r.lost,
            r.duplicate_runs,
            "never" if r.seconds_to_recover is None else f"{r.seconds_to_recover:.1f}",
            "never" if r.seconds_to_catch_up is None else f"{r.seconds_to_catch_up:.1f}",
            f"{r.before_per_s:.1f}",
            f"{r.during_per_s:.1f}",
            f"{r.after_per_s:.1f}",
            _wait(r.p95_wait_ms),
            "no" if r.problems else "yes",
        )
        lines.append(
            " ".join(
                str(cell).rjust(width) if i else str(cell).ljust(width)
                for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
            )
        )
        for note in [*r.notes, *(f"PROBLEM: {p}" for p in r.problems)]:
            lines.append(f"    {note}")
    return "\n".join(lines)


def write_json(path: Path, settings: Settings, results: Sequence[Result], seconds: float) -> None:
    """Write the settings and every result to ``path``."""
    document = {
        "settings": settings.__dict__,
        "seconds": round(seconds, 1),
        "ok": not any(r.problems for r in results),
        "faults": [r.as_json() for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
