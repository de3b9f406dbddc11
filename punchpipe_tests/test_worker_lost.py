"""Fault matrix (issue 9): a Celery worker process killed in the middle of a Level 0 step.

A real redis-server and a real ``punchpipe worker``; ``process`` runs with the Celery executor.
While a step runs, the test SIGKILLs the worker's pool process that executes it (as the kernel's
out-of-memory killer would). With late acknowledgement and ``task_reject_on_worker_lost`` the
step's task goes back to the queue and runs again: the run succeeds, every image is made once,
on disk with its catalogued checksum, and nothing half-written is left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import psutil

from punchpipe_assets.runner import INSTANCE_TEMPLATE
from punchpipe_assets.simulate import simulate
from punchpipe_tests.archive_checks import assert_level0_made_once
from punchpipe_tests.celery_cluster import celery_installation, celery_worker
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.test_guard import punchpipe


def step_running(instance: dg.DagsterInstance) -> str | None:
    """Return the key of a step that started and has not ended in a started run, if any."""
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        records = instance.get_records_for_run(run.run_id).records
        started = {r.event_log_entry.step_key for r in records if r.event_log_entry.dagster_event_type == "STEP_START"}
        ended = {
            r.event_log_entry.step_key
            for r in records
            if r.event_log_entry.dagster_event_type in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_UP_FOR_RETRY")
        }
        running = [key for key in started - ended if key and key.startswith("level0_")]
        if running:
            return running[0]
    return None


def test_a_worker_killed_mid_step_leaves_every_product_made_once(tmp_path):
    log_path = tmp_path / "worker.log"
    with celery_installation(tmp_path) as (config, env):
        (tmp_path / "dagster").mkdir(exist_ok=True)
        shutil.copy(INSTANCE_TEMPLATE, tmp_path / "dagster" / "dagster.yaml")
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
            instance.get_runs()  # the storages exist before three processes open them
        with celery_worker(env, log_path, "punchbowl") as worker:
            check_worker_kill(tmp_path, config, env, worker, log_path)


def check_worker_kill(tmp_path: Path, config, env: dict[str, str], worker: subprocess.Popen, log_path: Path) -> None:
    """Kill the worker's pool process mid-step and check the run, the products and the archive."""
    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=64, seed=8)
    for path in report.files:
        shutil.copy(path, config.landing_dir / path.name)
    process = punchpipe(env, "process", "--quiet")
    deadline = time.monotonic() + 300
    step = None
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        while step is None:
            assert process.poll() is None, process.communicate()[0] + log_path.read_text()
            assert time.monotonic() < deadline, "no Level 0 step started in the worker"
            step = step_running(instance)
            time.sleep(0.2)
    children = psutil.Process(worker.pid).children(recursive=True)
    assert children, "the worker has no pool process"
    killed = children[0].pid
    os.kill(killed, signal.SIGKILL)

    output, _ = process.communicate(timeout=900)
    worker_log = log_path.read_text()
    assert process.returncode == 0, output + worker_log
    assert f"pid:{killed} exited with 'signal 9 (SIGKILL)'" in worker_log, worker_log
    # The killed step's task went back to the queue and ran again, once, to success.
    before_kill = worker_log.split(f"pid:{killed} exited")[0]
    task = re.findall(r"Task execute_plan\[([0-9a-f-]+)\] received", before_kill)[-1]
    assert worker_log.count(f"Task execute_plan[{task}] received") == 2, worker_log
    assert worker_log.count(f"Task execute_plan[{task}] succeeded") == 1, worker_log
    assert worker.poll() is None, "the worker itself must survive its pool process"

    assert_level0_made_once(config, len(report.images))
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        runs = instance.get_runs()
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
        succeeded = [
            r.event_log_entry.step_key
            for r in instance.get_records_for_run(runs[-1].run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records
        ]
        assert step in succeeded, (step, succeeded)
