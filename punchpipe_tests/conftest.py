"""Shared fixtures: real catalogs (SQLite and PostgreSQL), real Dagster instances, simulated telemetry."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

# One Prefect home per test worker (pytest-xdist): punchbowl's flows keep their runs in its database.
os.environ.setdefault("PREFECT_HOME", f"/tmp/punchpipe-prefect-home-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}")
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from punchpipe_assets.config import PipelineConfig, immediate_config  # noqa: E402
from punchpipe_assets.resources.catalog import CatalogResource  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get("PUNCHPIPE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
SIMULATION_START = datetime(2025, 8, 1, 12, 0, 0)


def create_postgres_database() -> str:
    """Create an empty PostgreSQL database and return its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text

    name = f"punchpipe_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_postgres_database(url: str) -> None:
    """Drop a database made by ``create_postgres_database``."""
    from sqlalchemy import create_engine, text

    from punchpipe_assets.resources.catalog import _engine

    _engine.cache_clear()
    name = url.rsplit("/", 1)[1]
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    """Each test using it runs on SQLite and on the real PostgreSQL server."""
    return request.param


@pytest.fixture
def catalog_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """Provide a fresh, empty catalog database on the backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def config(tmp_path: Path, catalog_url: str) -> PipelineConfig:
    """Provide a configuration whose home is a temporary folder; no replay wait, no settle time."""
    return immediate_config(tmp_path / "home", catalog_url)


@pytest.fixture
def catalog(config: PipelineConfig) -> CatalogResource:
    """Provide the catalog resource of the test configuration."""
    return CatalogResource(url=config.catalog_url)


@pytest.fixture
def instance(backend: str, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """Provide a real Dagster instance: SQLite storage, or PostgreSQL storage in a fresh database."""
    (tmp_path / "dagster").mkdir()
    if backend == "sqlite":
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            yield instance
        return
    url = create_postgres_database()
    try:
        # The production storage class (``dagster.yaml``): dagster_postgres, patient with outages.
        patient = {"module": "punchpipe_assets.resources.patient_storage", "class": "PatientPostgresStorage"}
        overrides = {"storage": {"custom": {**patient, "config": {"postgres_url": url}}}}
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster"), overrides=overrides) as instance:
            yield instance
    finally:
        drop_postgres_database(url)
