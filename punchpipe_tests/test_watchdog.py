"""Freshness policies and the product-count watchdog, on real instances, catalogs and Level 0 runs."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.freshness import FreshnessState, TimeWindowFreshnessPolicy
from dagster._daemon.freshness import FreshnessDaemon
from PIL import Image
from pydantic import ValidationError

from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.config import load_config
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.drive import workspace_context
from punchpipe_assets.level0.assets import level0_key
from punchpipe_assets.levelq.assets import LEVELQ_CQM, LEVELQ_CTM, LEVELQ_QAM
from punchpipe_assets.resources.catalog import CatalogResource
from punchpipe_assets.runner import code_location_config
from punchpipe_assets.sensors.landing import scan_landing
from punchpipe_assets.simulate import simulate
from punchpipe_assets.watchdog import PRODUCT_COUNT_CHECK
from punchpipe_tests.chain import materialize
from punchpipe_tests.conftest import SIMULATION_START

SIZE = 128
CAMERA = CAMERAS[0]
FULL, SHORT = "2025-08-01-12:00", "2025-08-01-13:00"


def test_definitions_carry_freshness_policies_and_the_watchdog(tmp_path):
    config = load_config(None, home=str(tmp_path), freshness={"level0_warn_minutes": 30, "level0_fail_minutes": 90})
    graph = build_definitions(config).resolve_asset_graph()
    level0 = graph.get(level0_key(CAMERA)).freshness_policy
    assert isinstance(level0, TimeWindowFreshnessPolicy)
    assert (level0.warn_window.to_timedelta().total_seconds(), level0.fail_window.to_timedelta().total_seconds()) == (
        1800,
        5400,
    )
    assert all(graph.get(key).freshness_policy is not None for key in (LEVELQ_CQM, LEVELQ_CTM))
    assert graph.get(LEVELQ_QAM).freshness_policy is None  # daily: not near real time
    checks = {key for key in graph.asset_check_keys if key.name == PRODUCT_COUNT_CHECK}
    assert {key.asset_key for key in checks} == {
        *(level0_key(c) for c in CAMERAS),
        *(dg.AssetKey(f"level1_early_{c.slug}") for c in CAMERAS),
        LEVELQ_CTM,
    }
    off = build_definitions(load_config(None, home=str(tmp_path), freshness={"enabled": False}))
    assert off.resolve_asset_graph().get(level0_key(CAMERA)).freshness_policy is None


@pytest.mark.parametrize(
    "section",
    [
        {"freshness": {"level0_warn_minutes": 300, "level0_fail_minutes": 240}},
        {"freshness": {"levelq_fail_minutes": 0.5}},
        {"freshness": {"stale_minutes": 5}},
        {"watchdog": {"level0_per_hour": {"PM": -1}}},
        {"watchdog": {"level0_per_hour": {"pm": 15}}},
        {"watchdog": {"level0_per_hour": {}}},
        {"watchdog": {"min_fraction": 0}},
        {"quicklook": {"size": 127}},
        {"quicklook": {"low_percentile": 99, "high_percentile": 50}},
    ],
)
def test_configuration_refuses_nonsense(tmp_path, section):
    with pytest.raises(ValidationError):
        load_config(None, home=str(tmp_path), **section)


def check_history(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    """Return the newest ``product_count`` evaluation of each partition: partition -> evaluation."""
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(key, PRODUCT_COUNT_CHECK), limit=100
    )
    newest: dict = {}
    for record in records:  # newest first; planned executions carry no evaluation yet
        evaluation = record.event.dagster_event.event_specific_data
        if isinstance(evaluation, dg.AssetCheckEvaluation):
            newest.setdefault(evaluation.partition, evaluation)
    return newest


def test_watchdog_flags_a_short_hour_and_passes_a_full_one(config, instance, tmp_path):
    report = simulate(SIMULATION_START, 1.25, tmp_path / "sim", size=SIZE, seed=2, cameras=(CAMERA,))
    for path in report.files:
        shutil.copy(path, Path(config.landing_dir) / path.name)
    scan_landing(CatalogResource(url=config.catalog_url), config, max_files=10**6)
    key = level0_key(CAMERA)

    materialize(config, instance, [key], [FULL, SHORT])  # a partition-range run, as the sensor asks
    materialize(config, instance, [key], [FULL, SHORT])  # and again: every run records its own evaluations

    evaluations = check_history(instance, key)
    full, short = evaluations[FULL], evaluations[SHORT]
    assert full.passed and full.severity == dg.AssetCheckSeverity.WARN
    assert full.metadata["counts"].value == {"PM": 15, "PZ": 15, "PP": 15, "CR": 8, "DK": 1}
    assert full.metadata["missing_kinds"].value == []
    assert not short.passed and short.severity == dg.AssetCheckSeverity.WARN
    assert short.metadata["missing_kinds"].value == ["CR", "DK", "PM", "PP", "PZ"]
    assert short.metadata["products"].value < short.metadata["expected"].value == 54
    assert evaluations[None].metadata["short_hours"].value.keys() == {SHORT}  # the range's summary

    # The daemon's freshness evaluation of the code location as loaded: just made, so fresh; never made, not.
    with code_location_config(config), workspace_context(instance) as context:
        list(FreshnessDaemon().run_iteration(context))
    states = instance.get_freshness_state_records([key, level0_key(CAMERAS[1])])
    assert states[key].freshness_state == FreshnessState.PASS
    assert level0_key(CAMERAS[1]) not in states or states[level0_key(CAMERAS[1])].freshness_state != FreshnessState.PASS

    result = materialize(config, instance, [key], [SHORT])  # one hour: Dagster records it per partition
    (single,) = [e for e in result.get_asset_check_evaluations() if e.check_name == PRODUCT_COUNT_CHECK]
    assert single.partition == SHORT and not single.passed

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[FULL]), limit=1
    ).records
    quicklook = records[0].asset_materialization.metadata["quicklook"]
    assert isinstance(quicklook, dg.MarkdownMetadataValue)
    encoded = quicklook.value.split("data:image/png;base64,", 1)[1].split(")", 1)[0]
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "PNG" and max(image.size) == config.quicklook.size
    assert "_20250801125" in quicklook.value  # the hour's newest frame (the dark at minute 59)
