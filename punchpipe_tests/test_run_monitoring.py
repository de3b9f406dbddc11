"""Fault matrix (issue 9): the run worker of a daemon-launched run killed in the middle of a step.

A real ``dagster-daemon`` on the embedded instance (its ``dagster.yaml``: run monitoring, run
retries for infrastructure failures) launches the Level 0 run itself (landing sensor). The test
SIGKILLs the run worker while a step runs (as the out-of-memory killer would). The run must be
marked failed with the reason (Dagster's code server sees its run process die at once; run
monitoring is the backstop when the code server is gone too), run retries (infrastructure
failures only) must re-execute it from failure, and the partition must end materialized: every
image made once, on disk with its catalogued checksum, nothing half-written, no run left started.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml

from punchpipe_assets.runner import INSTANCE_TEMPLATE
from punchpipe_assets.simulate import simulate
from punchpipe_tests.archive_checks import assert_level0_made_once
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.test_end_to_end import BIN, REPO, dagster_process
from punchpipe_tests.test_guard import installation

pytestmark = pytest.mark.e2e


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """Return the pid of a run's worker, from its engine event "Executing steps in process (pid: N)"."""
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        found = re.search(r"Executing steps in process \(pid: (\d+)\)", record.event_log_entry.message or "")
        if found:
            return int(found.group(1))
    return None


def wait(what: str, probe, timeout: float, daemon) -> object:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` or if the daemon exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert daemon.poll() is None, "dagster-daemon exited: " + daemon.log_path.read_text()[-5000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}: " + daemon.log_path.read_text()[-5000:]
        time.sleep(0.5)


def test_a_killed_run_worker_is_marked_failed_and_retried_to_completion(tmp_path):
    config, env = installation(tmp_path)
    config_path = Path(env["PUNCHPIPE_CONFIG"])
    data = yaml.safe_load(config_path.read_text())
    data["sensor"] = data.get("sensor", {}) | {"interval_seconds": 5}
    config_path.write_text(yaml.safe_dump(data))
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(INSTANCE_TEMPLATE, dagster_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs()  # the storages exist before the daemon and its run workers open them
        instance.event_log_storage.set_concurrency_slots("punchbowl", 3)
    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=64, seed=9)
    config.make_dirs()
    for path in report.files:
        shutil.copy(path, config.landing_dir / path.name)
    (tmp_path / "logs").mkdir()

    workspace = str(REPO / "workspace.yaml")
    with dagster_process(
        "daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], env, tmp_path / "logs"
    ) as daemon:

        def step_started() -> dg.DagsterRun | None:
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                    if instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records:
                        return run
            return None

        killed_run = wait("a Level 0 step to start", step_started, 300, daemon)
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            pid = run_worker_pid(instance, killed_run.run_id)
        assert pid is not None and pid in {p.pid for p in psutil.Process(daemon.pid).children(recursive=True)}
        psutil.Process(pid).send_signal(signal.SIGKILL)

        def retried_and_done() -> list[dg.DagsterRun] | None:
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                retries = instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": killed_run.run_id}))
                if retries and retries[0].status == dg.DagsterRunStatus.SUCCESS:
                    return retries
            return None

        retries = wait("the retry of the killed run to succeed", retried_and_done, 420, daemon)

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        killed = instance.get_run_by_id(killed_run.run_id)
        assert killed.status == dg.DagsterRunStatus.FAILURE
        failure = instance.get_records_for_run(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        assert failure, "the killed run has no failure event"
        messages = [
            r.event_log_entry.message or ""
            for r in instance.get_records_for_run(killed.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
        ]
        assert any("terminated by signal 9 (SIGKILL)" in m for m in messages), messages
        assert "Retrying the run" in messages, messages
        assert len(retries) == 1 and killed.tags.get("dagster/auto_retry_run_id") == retries[0].run_id
        unfinished = instance.get_runs(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
        )
        assert unfinished == []
    assert_level0_made_once(config, len(report.images))
