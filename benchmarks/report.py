"""The results as a table for people and as JSON for machines (and for the smoke test)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.harness import Scenario


def to_json(
    scenarios: Sequence[Scenario],
    *,
    size: str,
    command: str,
    machine: dict[str, Any],
    watchd: dict[str, str],
    seconds: float,
) -> dict[str, Any]:
    return {
        "size": size,
        "command": command,
        "machine": machine,
        "watchd": watchd,
        "seconds": round(seconds, 1),
        "scenarios": {scenario.name: scenario.to_json() for scenario in scenarios},
    }


def render(scenarios: Sequence[Scenario], console: Console) -> None:
    """One row per figure (median, target, verdict, every run), then what was skipped and why."""
    table = Table(title="watchd benchmarks (medians over repeated runs)")
    for column in ("scenario", "figure", "median", "unit", "target", "met", "runs"):
        table.add_column(column, justify="right" if column in ("median", "runs") else "left")
    for scenario in scenarios:
        if scenario.error:
            table.add_row(scenario.name, "[red]error[/red]", "", "", "", "", "")
        for figure in scenario.figures:
            met = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: ""}[figure.met]
            table.add_row(
                scenario.name,
                figure.label,
                _number(figure.value),
                figure.unit,
                str(figure.target or ""),
                met,
                " ".join(_number(run) for run in figure.runs),
            )
    console.print(table)
    for scenario in scenarios:
        for line in scenario.notes:
            console.print(f"{scenario.name}: {line}", highlight=False)
        for line in scenario.skipped:
            console.print(f"{scenario.name}: [yellow]skipped[/yellow] {line}", highlight=False)
        if scenario.error:
            console.print(f"{scenario.name}: [red]error[/red] {scenario.error}", highlight=False)


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"
