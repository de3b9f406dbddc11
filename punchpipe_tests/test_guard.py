"""One writer at a time (fault matrix): two ``punchpipe process`` on one home; ``process`` beside a daemon."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy import select

from punchpipe_assets.config import immediate_config
from punchpipe_assets.guard import PipelineBusy, exclusive_writer, lock_holder
from punchpipe_assets.resources.catalog import CatalogResource, ProductFile
from punchpipe_assets.runner import INSTANCE_TEMPLATE, run_process
from punchpipe_assets.simulate import simulate
from punchpipe_tests.conftest import SIMULATION_START

PUNCHPIPE = Path(sys.executable).parent / "punchpipe"


def installation(tmp_path: Path):
    """Write an embedded installation (SQLite, no settle or replay wait) and its command environment."""
    config = immediate_config(tmp_path / "home")
    config.calibration_image_size = 64  # the tests' simulated frames and calibration files
    config_path = tmp_path / "punchpipe.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "PUNCHPIPE_CONFIG": str(config_path), "DAGSTER_HOME": str(tmp_path / "dagster")}
    env.pop("PUNCHPIPE_CATALOG_URL", None)
    return config, env


def punchpipe(env: dict[str, str], *args: str) -> subprocess.Popen:
    """Start the ``punchpipe`` command as a real process."""
    return subprocess.Popen(
        [str(PUNCHPIPE), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_second_process_on_a_busy_home_says_who_holds_it_and_the_first_finishes_consistent(tmp_path):
    config, env = installation(tmp_path)
    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=64, seed=1)
    for path in report.files:
        shutil.copy(path, config.landing_dir / path.name)

    first = punchpipe(env, "process", "--quiet")
    deadline = time.monotonic() + 300
    while lock_holder(config) is None:
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "the first process never took the writer lock"
        time.sleep(0.2)
    assert lock_holder(config)["pid"] == first.pid
    second = punchpipe(env, "process", "--quiet")
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 75, output
    assert f"pid {first.pid}" in output and "holds its writer lock" in output, output
    assert first.poll() is None, "the refusal must come while the first one still runs"
    first_output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, first_output

    # Archive and catalog agree: every catalogued product on disk with its checksum, made once.
    with CatalogResource(url=config.catalog_url).session() as session:
        products = session.scalars(select(ProductFile).where(ProductFile.level == "0")).all()
    assert len(products) == len(report.images)
    for product in products:
        data = (config.archive_dir / product.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == product.sha256, product.path
    assert not list(config.archive_dir.rglob(".staging-*"))

    # The lock is released: the next one goes on (and finds nothing new to do).
    again = punchpipe(env, "process", "--quiet")
    again_output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, again_output
    assert lock_holder(config) is None


def test_process_waits_for_the_lock_when_asked_and_refuses_beside_a_live_daemon(tmp_path):
    from dagster._daemon.types import DaemonHeartbeat

    config, _ = installation(tmp_path)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        with exclusive_writer(config, "backfill"):
            started = time.monotonic()
            with pytest.raises(PipelineBusy, match=r"backfill \(pid \d+"):
                run_process(config, instance, show_progress=False, wait_seconds=1.5)
            assert time.monotonic() - started >= 1.5  # it waited before giving up
        assert run_process(config, instance, show_progress=False)["runs"] == 0  # free again

        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), "SensorDaemon", None, None))
        with pytest.raises(PipelineBusy, match="dagster-daemon runs on this instance"):
            run_process(config, instance, show_progress=False)
        assert lock_holder(config) is None  # the refusal released the lock
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 600, "SensorDaemon", None, None))
        assert run_process(config, instance, show_progress=False)["failed_runs"] == 0  # a stale heartbeat: go on


def test_a_killed_process_leaves_no_run_stuck_and_the_next_one_completes_the_work(tmp_path):
    import signal

    config, env = installation(tmp_path)
    report = simulate(SIMULATION_START, 0.25, tmp_path / "sim", size=64, seed=2)
    for path in report.files:
        shutil.copy(path, config.landing_dir / path.name)
    # The instance's storages exist before the test reads them beside a running process: Dagster's
    # SQLite storages are created (and their alembic revision stamped) by whoever opens them first,
    # and two processes creating them at once may stamp twice.
    (tmp_path / "dagster").mkdir(exist_ok=True)
    shutil.copy(INSTANCE_TEMPLATE, tmp_path / "dagster" / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        instance.get_runs()
    killed = punchpipe(env, "process", "--quiet")
    deadline = time.monotonic() + 300
    started: list = []
    while not started:
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline, "no run started"
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
            started = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        time.sleep(0.5)
    killed.send_signal(signal.SIGKILL)
    killed.wait(60)
    (config.archive_dir / "0" / ".staging-interrupted").mkdir(parents=True, exist_ok=True)  # as a kill mid-write leaves
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        stuck = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert [r.run_id for r in stuck] == [started[0].run_id]

    after = punchpipe(env, "process", "--quiet")
    output, _ = after.communicate(timeout=900)
    assert after.returncode == 0, output
    assert f"run {started[0].run_id} was orphaned" in output, output
    assert "removed the staging folder" in output and not list(config.archive_dir.rglob(".staging-*")), output
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        orphan = instance.get_run_by_id(started[0].run_id)
        assert orphan.status == dg.DagsterRunStatus.FAILURE
        unfinished = instance.get_runs(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
        )
        assert unfinished == []
        failure = instance.get_records_for_run(started[0].run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        assert "ended before the run finished" in failure[-1].event_log_entry.dagster_event.message
    with CatalogResource(url=config.catalog_url).session() as session:
        products = session.scalars(select(ProductFile).where(ProductFile.level == "0")).all()
    assert len(products) == len(report.images)  # nothing lost
    for product in products:
        data = (config.archive_dir / product.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == product.sha256, product.path
