"""The command line's live display of the runs ``process`` and ``backfill`` execute."""

from __future__ import annotations

import time

import dagster as dg
from rich.console import Console

console = Console(stderr=True)


def describe_run(run: dg.DagsterRun) -> str:
    """Describe a run in a few words: its assets and partitions."""
    tags = run.tags
    first = tags.get("dagster/asset_partition_range_start") or tags.get("dagster/partition")
    last = tags.get("dagster/asset_partition_range_end") or first
    span = "" if first is None else (f" {first}" if first == last else f" {first} .. {last}")
    keys = sorted(key.to_user_string() for key in run.asset_selection or ())
    shown = ", ".join(keys[:4]) + (f" +{len(keys) - 4}" if len(keys) > 4 else "")
    origin = tags.get("dagster/sensor_name") or ("backfill" if "dagster/backfill" in tags else "manual")
    return f"{shown}{span} ({origin})"


class RunDisplay:
    """Prints one line per run as it starts and ends, with its duration and outcome.

    Parameters
    ----------
    enabled
        Print nothing when false.

    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started: dict[str, float] = {}
        self.count = 0

    def __enter__(self) -> RunDisplay:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def on_run(self, run: dg.DagsterRun, event: str) -> None:
        """Report a run ``started`` or ``finished``."""
        if event == "started":
            self.count += 1
            self.started[run.run_id] = time.monotonic()
            if self.enabled:
                console.print(f"[dim]run {self.count}[/dim] {describe_run(run)} ...")
            return
        seconds = time.monotonic() - self.started.pop(run.run_id, time.monotonic())
        if self.enabled:
            style = "green" if run.status == dg.DagsterRunStatus.SUCCESS else "red"
            console.print(f"  [{style}]{run.status.value.lower()}[/{style}] in {seconds:.0f} s")
