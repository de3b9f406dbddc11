"""One scheduler: ``process`` drives the daemon's own loops; ``backfill`` launches real Dagster backfills."""

from __future__ import annotations

import shutil
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.resources.catalog import utcnow
from punchpipe_assets.runner import run_backfill, run_process
from punchpipe_assets.simulate import simulate
from punchpipe_tests.chain import SIZE, WFI, deliver_set, products, small_mosaic_config
from punchpipe_tests.conftest import SIMULATION_START


def requested(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """Every (asset, partition) the instance's runs materialized: asset key -> partitions."""
    found: dict[str, set[str]] = defaultdict(set)
    for record in instance.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION)):
        materialization = record.asset_materialization
        key = materialization.asset_key.to_user_string()
        if not key.startswith(("telemetry_", "calibration_")):  # reported by sensors, not made by runs
            found[key].add(materialization.partition)
    return dict(found)


def land_recent(config, hours: float, cameras=WFI, seed: int = 3) -> datetime:
    """Recent telemetry (ending now, within the automation window) and a calibration delivery."""
    end = utcnow().replace(microsecond=0)
    start = end - timedelta(hours=hours)
    report = simulate(start, hours, Path(config.home) / "downlinks", size=SIZE, seed=seed, cameras=cameras)
    for path in report.files:
        shutil.copy(path, Path(config.landing_dir) / path.name)
    deliver_set(config, start - timedelta(days=1), cameras)
    return start


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_process_carries_recent_telemetry_to_quickpunch_in_ordinary_runs_of_the_code_location(config, instance):
    config = small_mosaic_config(config)
    land_recent(config, 0.25)
    summary = run_process(config, instance, show_progress=False)
    assert summary["failed_runs"] == 0 and summary["files"] == 3
    assert products(config, "2", ["PT"]) and products(config, "Q", ["CT"])
    runs = instance.get_runs()
    assert len(runs) == summary["runs"] >= 3
    for run in runs:
        origin = run.remote_job_origin
        assert origin is not None, run.run_id  # the UI can re-execute it
        assert origin.repository_origin.code_location_origin.location_name == "punchpipe"
        assert origin.repository_origin.repository_name == "__repository__"
        instigator = run.tags.get("dagster/sensor_name") or run.tags.get("dagster/backfill")
        assert instigator, run.tags  # requested by a sensor, the automation or a backfill, never by hand
    sensors = {run.tags.get("dagster/sensor_name") for run in runs}
    assert "telemetry_landing_sensor" in sensors
    assert {"automation_sensor", "quicklook_automation_sensor"} & sensors | {
        b.tags.get("dagster/sensor_name") for b in instance.get_backfills()
    }
    # Run priorities: the newest telemetry's Level 0 first, then QuickPUNCH, then other automation.
    expected = {"telemetry_landing_sensor": "10", "quicklook_automation_sensor": "8", "automation_sensor": "5"}
    by_instigator = defaultdict(set)
    for run in runs:
        backfill = run.tags.get("dagster/backfill")
        instigator = instance.get_backfill(backfill).tags if backfill else run.tags
        by_instigator[instigator.get("dagster/sensor_name")].add(run.tags.get("dagster/priority"))
    assert dict(by_instigator) == {name: {expected[name]} for name in by_instigator}, dict(by_instigator)
    assert set(by_instigator) == set(expected), dict(by_instigator)
    # A second pass finds nothing new to request.
    again = run_process(config, instance, show_progress=False)
    assert again["runs"] == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_backfill_of_a_past_day_makes_every_level_in_dependency_order_in_a_bounded_number_of_runs(config, instance):
    """Check that a backfill of a past day (2025-08-01, outside the automation window) makes every level.

    Level 0 comes from the landing sensor, the rest from one backfill of the day.
    """
    config = small_mosaic_config(config)
    config.levelq.qam_wait_hours = 0.0
    report = simulate(
        SIMULATION_START,
        0.25,
        Path(config.home) / "downlinks",
        size=SIZE,
        seed=5,
        cameras=[c for c in CAMERAS if c.instrument == "WFI"],
    )
    for path in report.files:
        shutil.copy(path, Path(config.landing_dir) / path.name)
    deliver_set(config, SIMULATION_START - timedelta(days=1))
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0
    made = requested(instance)
    assert set(made) == {f"level0_{c.slug}" for c in WFI}  # automation leaves the old day alone
    # Level 0 of an old day is back-processing: priority 1, behind the newest data (10) and automation.
    assert {run.tags.get("dagster/priority") for run in instance.get_runs()} == {"1"}

    day = datetime(2025, 8, 1)
    result = run_backfill(config, day, day + timedelta(days=1), instance=instance, show_progress=False)
    assert result["status"] == "COMPLETED_SUCCESS" and result["failed_runs"] == 0, result
    made = requested(instance)
    for stage in ("level1_early", "level1_late", "level1_quick"):
        for camera in WFI:
            assert len(made[f"{stage}_{camera.slug}"]) == 24  # every hour of the day
    assert len(made["level2_ptm"]) == 24 and len(made["levelq_ctm"]) == 24
    assert made["levelq_qam"] == {"2025-08-01"} and len(made["levelq_cfm"]) == 4
    assert products(config, "2", ["PT", "CT"]) and products(config, "Q", ["CQ", "CT", "QA"])
    # Backfill policies: a few runs per asset group, not one per partition (6 x 24 hourly partitions alone).
    runs = instance.get_runs(dg.RunsFilter.for_backfill(result["backfill_id"]))
    assert {run.tags.get("dagster/priority") for run in runs} == {"0"}  # operator backfills run behind the rest
    assert len(made["level3_pim"]) == 24 and len(made["level3_cim"]) == 24
    assert len(made["level3_fcorona_clear_wfi1"]) == 2  # the day's grid points (every 12 hours)
    assert len(made["level3_ptm"]) == len(made["level3_ctm"]) == 24 and len(made["level3_starfield_clear"]) == 1
    assert made["level3_pam"] == made["level3_cam"] == {"2025-08-01"} and len(made["level3_vam"]) == 4
    codes = {p.file_type for p in products(config, "3", ["PT", "CT", "PA", "CA"])}
    assert codes == {"PT", "CT", "PA", "CA"}, codes  # with the bootstrap starfield pair; every bin made
    assert len(runs) == result["runs"] <= 45, [r.tags for r in runs]

    # Dependency order: every Level 2 run started after the late Level 1 runs had finished.
    def times(prefix: str | tuple[str, ...]) -> list[tuple[float, float]]:
        spans = []
        for run in runs:
            if any(key.to_user_string().startswith(prefix) for key in run.asset_selection or ()):
                record = instance.get_run_record_by_id(run.run_id)
                spans.append((record.start_time, record.end_time))
        return spans

    mosaics = ("level2_ptm", "level2_ctm", "level2_layers")  # level2_cnn (NFI PCA) needs no late WFI Level 1
    assert max(end for _, end in times("level1_late")) <= min(start for start, _ in times(mosaics))
    assert max(end for _, end in times("levelq_cqm")) <= min(start for start, _ in times("levelq_qam"))
