"""``turnout top``: every model version's live traffic as a terminal table.

It reads ``GET /v1/metrics/summary`` (the control plane's traffic window, fed
by Envoy's stat sink) once a second and redraws the table until Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_top"]

HEADER = ("MODEL", "VERSION", "WEIGHT", "RPS", "ERRORS", "P50 MS", "P99 MS", "BATCH")


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(model: str, version: str, weight: str, figures: dict[str, Any]) -> tuple[str, ...]:
    rate = figures["error_rate"]
    batching = figures["batching"]
    return (
        model,
        version,
        weight,
        _number(figures["rps"]),
        "-" if rate is None else f"{rate * 100:.1f}%",
        _number(figures["latency_ms"]["p50"]),
        _number(figures["latency_ms"]["p99"]),
        _number(batching["mean_batch_size"]) if batching else "-",
    )


def _columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def format_top(summary: dict[str, Any], model: str | None = None) -> str:
    """Return the table of ``summary`` (the body of /v1/metrics/summary): one row
    per model version, then one per model in total when it has several versions."""
    rows: list[tuple[str, ...]] = [HEADER]
    for entry in summary["models"]:
        if model is not None and entry["model"] != model:
            continue
        for version in entry["versions"]:
            rows.append(_row(entry["model"], version["version"], f"{version['weight']}%", version))
        if len(entry["versions"]) > 1:
            rows.append(_row(entry["model"], "(all)", "", entry["total"]))
    text = f"window {summary['window_s']:.0f}s\n" + _columns(rows)
    if len(rows) == 1:
        text += "(no models)\n" if model is None else f"(no model named {model!r})\n"
    return text
