"""Waits of the end-to-end tests on the daemon's own state (runs and sensor ticks), with bounded deadlines.

A negative claim ("nothing more is requested") holds only after every sensor concerned has
completed an evaluation that began after the last change it could react to (a run ending, a tick
that requested runs or reported events) and requested nothing: ``wait_until_settled``. A wait
never guesses a quiet period.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import requests

POLL_SECONDS = 2.0
SETTLE_POLL_SECONDS = 4.0
#: Ticks read per sensor and poll: a few minutes of history at the tests' 5 s intervals.
TICK_WINDOW = 40
REPOSITORY = {"repositoryLocationName": "punchpipe", "repositoryName": "__repository__"}
LANDING_SENSOR = "telemetry_landing_sensor"
CALIBRATION_SENSOR = "calibration_delivery_sensor"
WAITS_SENSOR = "waits_expired_sensor"
AUTOMATION_SENSOR = "automation_sensor"
QUICKLOOK_SENSOR = "quicklook_automation_sensor"
ALL_SENSORS = (LANDING_SENSOR, CALIBRATION_SENSOR, WAITS_SENSOR, AUTOMATION_SENSOR, QUICKLOOK_SENSOR)
FINISHED_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_IN_PROGRESS = {"REQUESTED", "CANCELING", "FAILING"}

#: A GraphQL client: ``gql(query, **variables) -> data``.
Query = Callable[..., dict]

SENSOR_TICKS_QUERY = """
query SensorTicks($selector: RepositorySelector!, $after: Float, $limit: Int) {
  sensorsOrError(repositorySelector: $selector) {
    __typename
    ... on Sensors {
      results {
        name
        sensorState {
          ticks(afterTimestamp: $after, limit: $limit) {
            id status timestamp endTimestamp runIds
            requestedAssetKeys { path }
            error { message }
          }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

ALL_RUNS_QUERY = """
query AllRuns($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs {
      results { runId status creationTime endTime tags { key value } assetSelection { path } }
    }
    ... on PythonError { message }
  }
}
"""

BACKFILLS_QUERY = """
query Backfills {
  partitionBackfillsOrError(limit: 100) {
    __typename
    ... on PartitionBackfills { results { id status assetSelection { path } } }
    ... on PythonError { message }
  }
}
"""


class Budget:
    """The seconds one test may spend waiting on the daemon, shared by all its waits.

    ``cap(seconds)`` is a wait's own deadline cut to what is left, so that the waits of a test
    cannot sum past its budget (kept below the test's pytest timeout, so a wait fails with its
    reason, not pytest-timeout with a stack).
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def cap(self, seconds: float) -> float:
        """Return ``seconds`` or what is left of the budget if less; fail if nothing is left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the test's waiting budget of {self.seconds:.0f} s is spent")
        return min(seconds, left)


def wait_for(
    what: str,
    probe: Callable[[], Any],
    timeout: float,
    check: Callable[[], None] | None = None,
    poll: float = POLL_SECONDS,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Call ``probe`` until it returns something truthy, and return that; fail after ``timeout`` seconds.

    ``check`` runs before each attempt and should raise if waiting is pointless (a process died);
    ``describe`` adds the state waited on to the failure message.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if check is not None:
            check()
        try:
            result = probe()
            if result:
                return result
        except (requests.RequestException, AssertionError) as error:  # not ready yet
            last_error = error
        if time.monotonic() > deadline:
            state = f"; state: {describe()}" if describe is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last error: {last_error!r}{state}")
        time.sleep(poll)


def runs(gql: Query, **run_filter: Any) -> list[dict]:
    """Return the runs (newest first) with status, times, tags (as a dict) and selected asset keys (as strings)."""
    result = gql(ALL_RUNS_QUERY, filter=run_filter)["runsOrError"]
    assert result["__typename"] == "Runs", result
    return [
        {
            **r,
            "tags": {t["key"]: t["value"] for t in r["tags"]},
            "assets": {"/".join(a["path"]) for a in r["assetSelection"] or []},
        }
        for r in result["results"]
    ]


def backfills_in_progress(gql: Query) -> list[dict]:
    """Return the newest backfills still in progress (an automation tick may request one), with their asset keys."""
    result = gql(BACKFILLS_QUERY)["partitionBackfillsOrError"]
    assert result["__typename"] == "PartitionBackfills", result
    return [
        {**b, "assets": {"/".join(a["path"]) for a in b["assetSelection"] or []}}
        for b in result["results"]
        if b["status"] in BACKFILL_IN_PROGRESS
    ]


def sensor_ticks(gql: Query, after: float, limit: int = TICK_WINDOW) -> dict[str, list[dict]]:
    """Return the newest ticks (at most ``limit``) of every sensor begun after ``after`` (Unix time), by name."""
    result = gql(SENSOR_TICKS_QUERY, selector=REPOSITORY, after=after, limit=limit)["sensorsOrError"]
    assert result["__typename"] == "Sensors", result
    ticks = {}
    for sensor in result["results"]:
        found = sensor["sensorState"]["ticks"]
        for tick in found:
            tick["requested"] = {"/".join(k["path"]) for k in tick["requestedAssetKeys"]}
        ticks[sensor["name"]] = sorted(found, key=lambda t: t["timestamp"], reverse=True)
    return ticks


def wait_for_evaluation(gql: Query, alive: Callable[[], None], sensor: str, after: float, timeout: float) -> dict:
    """Wait until ``sensor`` has completed a tick begun after ``after`` (a Unix time); return that tick.

    The tick's evaluation saw every state stored before ``after``; a failed tick fails the test.
    """

    def completed() -> dict | None:
        done = [t for t in sensor_ticks(gql, after)[sensor] if t["status"] != "STARTED"]
        if not done:
            return None
        tick = done[-1]  # the first completed one after ``after``
        if tick["status"] == "FAILURE":
            pytest.fail(f"{sensor} failed its evaluation: {tick['error']}")
        return tick

    return wait_for(f"an evaluation of {sensor} begun after {after:.1f}", completed, timeout, alive)


@dataclass
class Settled:
    """The state the daemon settled in: the runs considered and the quiet tick of each sensor."""

    runs: list[dict]
    quiet_ticks: dict[str, dict]
    last_change: float


def settled_state(
    gql: Query, sensors: Sequence[str], since: float, assets: Collection[str] | None = None
) -> Settled | None:
    """Return the settled state, or None while the daemon may still request something.

    Settled: no run or backfill considered (every one, or those selecting one of ``assets``) is
    queued or in progress, and every sensor in ``sensors`` has completed a tick that began after the last change
    and did nothing to the considered runs. The last change is the latest of ``since``, the end of
    every run considered and the end of every tick that failed, requested a run considered, or
    (without ``assets``) did anything at all (requested runs, reported events).
    """
    # Ticks first: a backfill or run a tick requested is then among those read next.
    ticks = sensor_ticks(gql, since)
    if any(assets is None or b["assets"] & set(assets) for b in backfills_in_progress(gql)):
        return None  # its runs may not exist yet
    considered = [r for r in runs(gql) if assets is None or r["assets"] & set(assets)]
    if any(r["status"] not in FINISHED_RUN_STATUSES for r in considered):
        return None
    ids = {r["runId"] for r in considered}
    last_change = max([since, *(r["endTime"] or 0.0 for r in considered)])

    def acted(tick: dict) -> bool:
        if tick["status"] == "FAILURE":
            return True
        if assets is None:
            return tick["status"] != "SKIPPED"
        return bool(set(tick["runIds"]) & ids or tick["requested"] & set(assets))

    # An evaluation under way (STARTED) is left out: it sees what the completed quiet one saw.
    for name in sensors:
        for tick in ticks[name]:
            if tick["status"] != "STARTED" and acted(tick):
                last_change = max(last_change, tick["endTimestamp"] or tick["timestamp"])
    quiet = {}
    for name in sensors:
        after = [t for t in ticks[name] if t["timestamp"] > last_change and t["status"] != "STARTED"]
        if not after:  # (a tick that acted ended before ``last_change``: none is among these)
            return None
        quiet[name] = after[-1]
    return Settled(considered, quiet, last_change)


def wait_until_settled(
    gql: Query,
    alive: Callable[[], None],
    since: float,
    timeout: float,
    sensors: Sequence[str] = ALL_SENSORS,
    assets: Collection[str] | None = None,
) -> Settled:
    """Wait until the daemon has settled (see ``settled_state``) after ``since`` (Unix time); return the state."""

    def describe() -> str:
        try:
            ticks = sensor_ticks(gql, since, limit=3)
            active = [(r["runId"][:8], r["status"], sorted(r["assets"])[:3]) for r in runs(gql) if r["endTime"] is None]
            active += [(b["id"], b["status"], sorted(b["assets"])[:3]) for b in backfills_in_progress(gql)]
        except Exception as error:  # noqa: BLE001 - diagnostics only
            return f"(unavailable: {error!r})"
        newest = {
            name: [(t["status"], round(t["timestamp"], 1), t["runIds"][:2]) for t in ticks[name]] for name in sensors
        }
        return f"runs and backfills not finished {active}; newest ticks {newest}"

    return wait_for(
        f"the daemon to settle ({', '.join(sensors)}; assets {sorted(assets) if assets else 'all'})",
        lambda: settled_state(gql, sensors, since, assets),
        timeout,
        alive,
        poll=SETTLE_POLL_SECONDS,
        describe=describe,
    )
