"""Execution chosen by configuration: Celery workers (real redis-server, real ``punchpipe worker``)."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
from sqlalchemy import select

from punchpipe_assets.config import load_config
from punchpipe_assets.execution import executor_for
from punchpipe_assets.resources.archive import sha256_of
from punchpipe_assets.resources.catalog import CatalogResource, ProductFile
from punchpipe_assets.simulate import simulate
from punchpipe_tests.celery_cluster import celery_installation, celery_worker
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.test_guard import punchpipe


def test_execution_mode_is_validated_and_selects_dagsters_executors(monkeypatch, tmp_path):
    monkeypatch.delenv("PUNCHPIPE_CELERY_BROKER", raising=False)
    monkeypatch.delenv("PUNCHPIPE_CELERY_BACKEND", raising=False)
    assert executor_for(load_config(None, home=str(tmp_path)).execution).name == "in_process"
    monkeypatch.setenv("PUNCHPIPE_EXECUTION", "multiprocess")
    assert executor_for(load_config(None, home=str(tmp_path)).execution).name == "multiprocess"
    monkeypatch.setenv("PUNCHPIPE_EXECUTION", "celery")
    with pytest.raises(ValueError, match="PUNCHPIPE_CELERY_BROKER"):
        load_config(None, home=str(tmp_path))
    monkeypatch.setenv("PUNCHPIPE_CELERY_BROKER", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("PUNCHPIPE_CELERY_BACKEND", "redis://127.0.0.1:1/1")
    assert executor_for(load_config(None, home=str(tmp_path)).execution).name == "celery"
    with pytest.raises(ValueError):
        load_config(None, home=str(tmp_path), execution={"mode": "dask"})


def test_process_runs_level0_steps_in_a_celery_worker_of_their_pool_queue(tmp_path):
    with (
        celery_installation(tmp_path) as (config, env),
        celery_worker(env, tmp_path / "worker.log", "punchbowl"),
    ):
        report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=64, seed=7)
        for path in report.files:
            shutil.copy(path, config.landing_dir / path.name)
        process = punchpipe(env, "process", "--quiet")
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output + (tmp_path / "worker.log").read_text()

        worker_log = (tmp_path / "worker.log").read_text()
        assert "execute_plan" in worker_log and "succeeded" in worker_log, worker_log
        with CatalogResource(url=config.catalog_url).session() as session:
            products = session.scalars(select(ProductFile).where(ProductFile.level == "0")).all()
        assert len(products) == len(report.images)
        for product in products:
            assert sha256_of(config.archive_dir / product.path) == product.sha256
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
            runs = instance.get_runs()
            assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            steps = instance.get_records_for_run(runs[0].run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
            assert any("celery" in (r.event_log_entry.message or "").lower() for r in steps)
