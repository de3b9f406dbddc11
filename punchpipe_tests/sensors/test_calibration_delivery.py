"""Calibration deliveries: validated, installed, versioned, quarantined when broken."""

from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from punchpipe_assets.calibration import synthesize_calibration
from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.cli import catalog_status
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.resources import ArchiveResource, build_resources
from punchpipe_assets.sensors.calibration import scan_calibration_landing

SIZE = 64
DATE = datetime(2025, 7, 1)


@pytest.fixture
def small_config(config):
    config.calibration_image_size = SIZE
    return config


def deliver(config, version: str, kinds=("quartic", "vignetting")) -> list[Path]:
    return synthesize_calibration(Path(config.calibration_landing_dir), DATE, file_version=version, size=SIZE,
                                  cameras=[CAMERAS[1]], kinds=kinds)


def states(config) -> dict[str, tuple[str, str | None]]:
    return {row["file"]: (row["state"], row["reason"]) for row in catalog_status(config)["calibration"]}


def test_new_version_supersedes_and_broken_file_is_quarantined(small_config, catalog):
    config = small_config
    archive = ArchiveResource(root=str(config.archive_dir))
    first = deliver(config, "1")
    results = scan_calibration_landing(catalog, archive, config)
    assert {r.state for r in results} == {"active"} and len(results) == len(first) == 8
    installed = Path(results[0].path)
    assert installed.is_file() and installed.is_relative_to(config.archive_dir) and not first[0].exists()

    second = deliver(config, "2", kinds=("vignetting",))
    scan_calibration_landing(catalog, archive, config)
    recorded = states(config)
    assert all(recorded[p.name] == ("active", None) for p in second)
    assert recorded["PUNCH_L1_GM2_20250701000000_v1.fits"][0] == "superseded"
    assert recorded["PUNCH_L1_FM2_20250701000000_v1.fits"] == ("active", None)

    broken = Path(config.calibration_landing_dir) / "PUNCH_L1_GM2_20250701000000_v3.fits"
    broken.write_bytes(Path(results[0].path).read_bytes()[:5000])
    wrong_camera = Path(config.calibration_landing_dir) / "PUNCH_L1_FZ9_20250701000000_v1.fits"
    wrong_camera.write_bytes(b"SIMPLE")
    scan_calibration_landing(catalog, archive, config)
    recorded = states(config)
    state, reason = recorded[broken.name]
    assert state == "quarantined" and broken.name in reason
    assert recorded[wrong_camera.name][0] == "quarantined"
    assert (Path(config.quarantine_dir) / (broken.name + ".reason.txt")).read_text().strip() == reason
    assert recorded["PUNCH_L1_GM2_20250701000000_v2.fits"] == ("active", None)  # the good version keeps serving
    assert "1" not in catalog_status(config)["levels"]  # calibration files are not products


def test_sensor_records_each_delivery_in_the_partition_of_its_date(small_config, instance):
    """With no product made yet, a delivery is on record in the partition of its date only."""
    config = small_config
    deliver(config, "1", kinds=("vignetting",))
    definitions = build_definitions(config)
    sensor = definitions.resolve_sensor_def("calibration_delivery_sensor")
    with dg.build_sensor_context(instance=instance, definitions=definitions,
                                 resources=build_resources(config)) as context:
        result = sensor(context)
    assert {(e.asset_key.to_user_string(), e.partition) for e in result.asset_events} == {
        ("calibration_vignetting_wfi2", "2025-07-01-00:00")
    }
    assert len(result.asset_events) == 4 and all(e.metadata["products_to_remake"].value == [] for e in result.asset_events)
    assert {state for state, _ in states(config).values()} == {"active"} and len(states(config)) == 4
