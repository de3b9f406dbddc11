"""The NFI PCA multi-asset in Dagster: a batch short of context waits, and is requested again when its wait is over."""

from datetime import datetime, timedelta

import dagster as dg
import pytest
from sqlalchemy import select

from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.level2.nfi_pca import NFI_CLEAR_CADENCE, NfiPcaSettings
from punchpipe_assets.level2.nfi_pca_assets import LEVEL2_CNN, PCA_BACKGROUND, PCA_COMPONENTS
from punchpipe_assets.products import catalog_product
from punchpipe_assets.resources.catalog import Wait
from punchpipe_assets.sensors.waits import expired_wait_requests
from punchpipe_tests.chain import materialize

WINDOW = datetime(2025, 8, 2, 0, 0)
PARTITION = "2025-08-02-00:00"
PCA_KEYS = [LEVEL2_CNN, PCA_COMPONENTS, PCA_BACKGROUND]


@pytest.fixture
def backend() -> str:
    """SQLite only: the catalog backend is not what this test is about."""
    return "sqlite"


def catalog_frames(config, catalog, count: int, start: datetime) -> None:
    """Catalog ``count`` early clear NFI frames from ``start`` at the clear cadence (rows only: none is read)."""
    with catalog.session() as session:
        for i in range(count):
            when = start + i * NFI_CLEAR_CADENCE
            catalog_product(
                session,
                None,
                code="XR",
                obs="4",
                date_obs=when,
                file_version=config.level0.file_version,
                path=f"1/XR4/{when:%Y/%m/%d}/PUNCH_L1_XR4_{when:%Y%m%d%H%M%S}_v1.fits",
                sha256="0" * 64,
                fingerprint="synthetic",
                parents=[],
                acquisition_time=when,
            )
        session.commit()


def test_a_batch_short_of_context_waits_is_requested_whole_when_the_wait_is_over_then_refused(
    config, catalog, instance
):
    # The window's 90 frames and 45 before; none after yet (the end of the data): the batch waits for them.
    config.level2.nfi_pca = NfiPcaSettings(wait_hours=24 * 365 * 10)  # the data are from 2025: still within the wait
    catalog_frames(config, catalog, 135, WINDOW - 45 * NFI_CLEAR_CADENCE + timedelta(minutes=3, seconds=32))
    result = materialize(config, instance, PCA_KEYS, [PARTITION])
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["problems"].value[0]["status"] == "waiting"
    repository = build_definitions(config).get_repository_def()
    with catalog.session() as session:
        [wait] = session.scalars(select(Wait)).all()
        assert (wait.asset_key, wait.partition_key) == ("level2_cnn", PARTITION)
        assert "context frames after (end of the data)" in wait.reason
        assert expired_wait_requests(session, repository, 5) == []  # not over yet
        wait.until = WINDOW  # the wait is over
        session.commit()
    with catalog.session() as session:
        [request] = expired_wait_requests(session, repository, 5)
    # The multi-asset cannot be subset: the request names all three products of the window.
    assert request.partition_key == PARTITION and set(request.asset_selection) == set(PCA_KEYS)
    # The sensor itself, evaluated as the daemon does (its requests resolved against its target).
    sensor = repository.get_sensor_def("waits_expired_sensor")
    context = dg.build_sensor_context(instance=instance, repository_def=repository, resources={"catalog": catalog})
    [resolved] = sensor.evaluate_tick(context).run_requests
    assert resolved.partition_key == PARTITION and set(resolved.asset_selection) == set(PCA_KEYS)
    assert resolved.job_name == repository.get_implicit_job_def_for_assets(PCA_KEYS).name

    # Past its wait the batch is judged on what exists: 135 frames are too few for punchbowl's PCA.
    config.level2.nfi_pca = NfiPcaSettings(wait_hours=6)
    result = materialize(config, instance, PCA_KEYS, [PARTITION])
    [check] = result.get_asset_check_evaluations()
    [problem] = check.metadata["problems"].value
    assert problem["status"] == "refused" and "min_frames = 180" in problem["reason"]
    with catalog.session() as session:
        assert session.scalars(select(Wait)).all() == []  # nothing waits any more
