"""Calibration deliveries: validated, installed, versioned, quarantined when broken."""

import os
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from punchpipe_assets.calibration.synthesize import synthesize_calibration
from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.cli import catalog_status
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.resources import ArchiveResource, build_resources
from punchpipe_assets.sensors.calibration import scan_calibration_landing

SIZE = 64
DATE = datetime(2025, 7, 1)


@pytest.fixture
def small_config(config):
    """Use the test configuration with calibration files of the test size."""
    config.calibration_image_size = SIZE
    return config


def deliver(config, version: str, kinds=("quartic", "vignetting")) -> list[Path]:
    """Deliver a synthesized calibration set of one camera to calibration-landing/."""
    return synthesize_calibration(
        Path(config.calibration_landing_dir), DATE, file_version=version, size=SIZE, cameras=[CAMERAS[1]], kinds=kinds
    )


def states(config) -> dict[str, tuple[str, str | None]]:
    """Return (state, reason) of every delivery as status shows it."""
    return {row["file"]: (row["state"], row["reason"]) for row in catalog_status(config)["calibration"]}


def test_new_version_supersedes_and_broken_file_is_quarantined(small_config, catalog):
    """Supersede older versions and quarantine broken files, the good version serving."""
    config = small_config
    archive = ArchiveResource(root=str(config.archive_dir))
    first = deliver(config, "1")
    results = scan_calibration_landing(catalog, archive, config)
    assert {r.state for r in results} == {"active"} and len(results) == len(first) == 8
    installed = small_config.archive_dir / results[0].path
    assert installed.is_file() and installed.is_relative_to(config.archive_dir) and not first[0].exists()

    second = deliver(config, "2", kinds=("vignetting",))
    scan_calibration_landing(catalog, archive, config)
    recorded = states(config)
    assert all(recorded[p.name] == ("active", None) for p in second)
    assert recorded["PUNCH_L1_GM2_20250701000000_v1.fits"][0] == "superseded"
    assert recorded["PUNCH_L1_FM2_20250701000000_v1.fits"] == ("active", None)

    broken = Path(config.calibration_landing_dir) / "PUNCH_L1_GM2_20250701000000_v3.fits"
    broken.write_bytes((small_config.archive_dir / results[0].path).read_bytes()[:5000])
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
    with dg.build_sensor_context(
        instance=instance, definitions=definitions, resources=build_resources(config)
    ) as context:
        result = sensor(context)
    assert {(e.asset_key.to_user_string(), e.partition) for e in result.asset_events} == {
        ("calibration_vignetting_wfi2", "2025-07-01-00:00")
    }
    assert len(result.asset_events) == 4 and all(
        e.metadata["products_to_remake"].value == [] for e in result.asset_events
    )
    assert {state for state, _ in states(config).values()} == {"active"} and len(states(config)) == 4


def test_redelivery_under_an_installed_name_with_other_content_is_quarantined(small_config, catalog):
    """Quarantine other content under an installed name; remove an identical copy; the installed file serves."""
    config = small_config
    archive = ArchiveResource(root=str(config.archive_dir))
    (first, *_) = deliver(config, "1", kinds=("vignetting",))
    (installed,) = [r for r in scan_calibration_landing(catalog, archive, config) if r.name == first.name]
    installed_bytes = (config.archive_dir / installed.path).read_bytes()

    first.write_bytes(installed_bytes)  # the same file again: nothing to do
    (again,) = [r for r in scan_calibration_landing(catalog, archive, config) if r.name == first.name]
    assert again.state == "duplicate" and not first.exists()

    changed = bytearray(installed_bytes)
    changed[-10] ^= 0xFF
    first.write_bytes(bytes(changed))
    (result,) = scan_calibration_landing(catalog, archive, config)
    reason = "already installed with other content: deliver a new version"
    assert (result.state, result.reason) == ("quarantined", reason)
    recorded = states(config)
    assert recorded[f"{first.name} (re-delivery 1)"] == ("quarantined", reason)
    assert recorded[first.name] == ("active", None)  # the installed version keeps serving, unchanged
    assert (config.archive_dir / installed.path).read_bytes() == installed_bytes
    assert not first.exists() and (Path(config.quarantine_dir) / first.name).read_bytes() == bytes(changed)
    assert reason in (Path(config.quarantine_dir) / (first.name + ".reason.txt")).read_text()
    assert scan_calibration_landing(catalog, archive, config) == []  # the next scan goes on


def test_file_under_a_quarantined_name_is_validated_again(small_config, catalog):
    """Validate a corrected file delivered under the name of one that was quarantined."""
    config = small_config
    archive = ArchiveResource(root=str(config.archive_dir))
    (good, *_) = deliver(config, "1", kinds=("vignetting",))
    content = good.read_bytes()
    good.write_bytes(content[:5000])
    results = {r.name: r.state for r in scan_calibration_landing(catalog, archive, config)}
    assert results[good.name] == "quarantined"
    good.write_bytes(content)
    assert [(r.name, r.state) for r in scan_calibration_landing(catalog, archive, config)] == [(good.name, "active")]
    assert states(config)[good.name] == ("active", None)


def test_delivery_whose_name_is_not_utf8_is_quarantined_and_the_others_installed(small_config, catalog):
    """Quarantine a delivery with an undecodable name, with the reason; install the others."""
    config = small_config
    archive = ArchiveResource(root=str(config.archive_dir))
    good, *_ = deliver(config, "1", kinds=("vignetting",))
    odd = os.path.join(os.fsencode(config.calibration_landing_dir), b"PUNCH_L1_GM2_\xff.fits")
    with open(odd, "wb") as handle:
        handle.write(good.read_bytes())
    results = {r.name: r.state for r in scan_calibration_landing(catalog, archive, config)}
    assert results["PUNCH_L1_GM2_\\xff.fits"] == "quarantined" and results[good.name] == "active"
    state, reason = states(config)["PUNCH_L1_GM2_\\xff.fits"]
    assert state == "quarantined" and reason.startswith("name is not valid UTF-8")
    assert not os.path.lexists(odd)
