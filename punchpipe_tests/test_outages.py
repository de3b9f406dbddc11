"""Fault matrix: PostgreSQL down for about 17 s in the middle of a materialization.

A private cluster (``pg_cluster``: its own data folder and port, never the shared server) holds
both Dagster's storage (the production ``dagster.yaml``: ``patient_storage``) and the catalog.
``punchpipe process`` runs as a real process; the test stops the cluster while a Level 0 step
runs, starts it again 17 s later, and checks that the run succeeded with archive and catalog
in agreement.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from punchpipe_assets.config import immediate_config
from punchpipe_assets.resources.catalog import _engine
from punchpipe_assets.resources.outages import CATALOG_RETRY_ENV
from punchpipe_assets.simulate import simulate
from punchpipe_tests.archive_checks import assert_level0_made_once
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.pg_cluster import PostgresCluster, available

REPO = Path(__file__).resolve().parents[1]
PUNCHPIPE = Path(sys.executable).parent / "punchpipe"
OUTAGE_SECONDS = 17.0

pytestmark = pytest.mark.skipif(not available(), reason="needs PostgreSQL 15's binaries and the postgres user")


@pytest.fixture
def cluster():
    """Provide a private PostgreSQL cluster, started; removed after the test."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        _engine.cache_clear()
        cluster.remove()


def installation(tmp_path: Path, cluster: PostgresCluster) -> tuple:
    """Write a production-like installation on the cluster: patient Dagster storage, PostgreSQL catalog."""
    storage_url = cluster.create_database("dagster_storage")
    catalog_url = cluster.create_database("catalog")
    config = immediate_config(tmp_path / "home", catalog_url)
    config.calibration_image_size = 64
    config_path = tmp_path / "punchpipe.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        "PUNCHPIPE_CONFIG": str(config_path),
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_PG_URL": storage_url,
        CATALOG_RETRY_ENV: "120",
        "PYTHONUNBUFFERED": "1",
    }
    return config, env


def level0_run_in_full_swing(instance: dg.DagsterInstance) -> dg.DagsterRun | None:
    """Return a started Level 0 run past its first step, if there is one.

    The first step pays punchbowl's import (no database use for many seconds); from the second
    on, steps start, query the catalog and log one after the other: an outage then meets them.
    """
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        if not any(key.path[0].startswith("level0") for key in run.asset_selection or ()):
            continue
        if instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS, limit=1).records:
            return run
    return None


def test_a_17_second_database_outage_mid_materialization_does_not_fail_the_run(tmp_path, cluster, monkeypatch):
    config, extra_env = installation(tmp_path, cluster)
    monkeypatch.setenv("DAGSTER_PG_URL", extra_env["DAGSTER_PG_URL"])  # this test's own instance too
    env = {**os.environ, **extra_env}
    env.pop("PUNCHPIPE_CATALOG_URL", None)
    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=64, seed=3)
    for path in report.files:
        shutil.copy(path, config.landing_dir / path.name)
    # The storage schema exists before ``process`` and this test's polling instance open it.
    subprocess.run(
        [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().get_runs(limit=1)"],
        env=env,
        check=True,
        timeout=120,
    )

    log = (tmp_path / "process.log").open("w")
    process = subprocess.Popen([str(PUNCHPIPE), "process", "--quiet"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        run = None
        with dg.DagsterInstance.from_config(extra_env["DAGSTER_HOME"]) as instance:
            while run is None:
                assert process.poll() is None, (tmp_path / "process.log").read_text()
                assert time.monotonic() < deadline, "no Level 0 step finished"
                run = level0_run_in_full_swing(instance)
                time.sleep(0.2)
            cluster.stop()
            stopped = time.time()
            time.sleep(OUTAGE_SECONDS)
            assert process.poll() is None, "process ended during the outage: " + (tmp_path / "process.log").read_text()
            cluster.start()
            restarted = time.time()
            returncode = process.wait(timeout=900)
            output = (tmp_path / "process.log").read_text()
            assert returncode == 0, output
            assert "database unreachable" in output, output  # the outage was met, and waited out

            hit = instance.get_run_by_id(run.run_id)
            assert hit.status == dg.DagsterRunStatus.SUCCESS, output
            events = [r.event_log_entry for r in instance.get_records_for_run(run.run_id).records]
            assert min(e.timestamp for e in events) < stopped and max(e.timestamp for e in events) > restarted
            failed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
            assert failed == [], [r.run_id for r in failed]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)

    # Nothing lost, nothing half-written: every image catalogued once, on disk with its checksum.
    assert_level0_made_once(config, len(report.images))


def assert_monitors_and_retries(instance: dg.DagsterInstance) -> None:
    """Check that an instance monitors runs and retries those that failed from infrastructure."""
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_start_timeout_seconds == 300
    assert instance.run_monitoring_cancel_timeout_seconds == 180
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert instance.run_retries_retry_on_asset_or_op_failure is False


def test_embedded_and_production_instances_monitor_runs_and_retry_infrastructure_failures(tmp_path, monkeypatch):
    from punchpipe_assets.runner import prepare_environment
    from punchpipe_tests.conftest import create_postgres_database, drop_postgres_database

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "embedded"))
    monkeypatch.setenv("PUNCHPIPE_HOME", str(tmp_path / "home"))
    prepare_environment(immediate_config(tmp_path / "home"))  # writes the embedded instance's dagster.yaml
    with dg.DagsterInstance.from_config(str(tmp_path / "embedded")) as embedded:
        assert_monitors_and_retries(embedded)

    url = create_postgres_database()
    try:
        monkeypatch.setenv("DAGSTER_PG_URL", url)
        (tmp_path / "production").mkdir()
        shutil.copy(REPO / "dagster.yaml", tmp_path / "production" / "dagster.yaml")
        with dg.DagsterInstance.from_config(str(tmp_path / "production")) as production:
            assert_monitors_and_retries(production)
            assert type(production.event_log_storage).__name__ == "PatientEventLogStorage"
            assert production.event_log_storage.connect_retry_seconds == 120
            production.get_runs(limit=1)  # the storage works
    finally:
        drop_postgres_database(url)
