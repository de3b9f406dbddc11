"""Level 3 starfield models and PTM/CTM selection: window inputs, refusals, bracketing pairs, waiting; bootstrap."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from punchpipe_assets.calibration.bootstrap import synthesize_starfield_models
from punchpipe_assets.calibration.kinds import CalibrationError, delivered_kind
from punchpipe_assets.calibration.validate import validate_calibration_file
from punchpipe_assets.config import Level3Settings, StarfieldSettings
from punchpipe_assets.level3.background import STARFIELD_WAITING_REASON, BackgroundSubtractedProcessor
from punchpipe_assets.level3.settings import VelocitySettings
from punchpipe_assets.level3.starfield import StarfieldBuilder
from punchpipe_assets.resources import ArchiveResource
from punchpipe_assets.resources.catalog import ModelRefusal, ProductFile

NOON = datetime(2025, 8, 1, 12)


@pytest.fixture
def backend() -> str:
    """Run these tests on SQLite only (they need no PostgreSQL)."""
    return "sqlite"


def test_settings_are_validated_with_defaults_for_the_mission():
    settings = Level3Settings()
    assert settings.starfield.spacing_hours == 24 and settings.starfield.half_window_hours == 48
    assert settings.low_noise.wait_hours == 2 and settings.velocity.min_inputs > settings.velocity.delta_t
    with pytest.raises(ValidationError, match="divide 24"):
        StarfieldSettings(spacing_hours=7)
    with pytest.raises(ValidationError, match="must not exceed"):
        StarfieldSettings(min_inputs_per_half=5, max_inputs_per_half=4)
    with pytest.raises(ValidationError, match="must exceed delta_t"):
        VelocitySettings(min_inputs=12, delta_t=12)


def add_product(session, code: str, when: datetime, level: str = "3", obs: str = "M", **columns) -> ProductFile:
    row = ProductFile(
        level=level,
        file_type=code,
        observatory=obs,
        file_version="1",
        date_obs=when,
        acquisition_time=columns.pop("slot", when),
        path=f"{level}/{code}{obs}/{when:%Y%m%d%H%M%S}.fits",
        sha256=f"{code}{obs}{when:%H%M%S}",
        fingerprint="x",
        **columns,
    )
    session.add(row)
    session.flush()
    return row


def test_a_grid_point_takes_the_pim_of_its_window_and_is_refused_with_too_few(config, catalog):
    config.level3.starfield = StarfieldSettings(half_window_hours=24, min_inputs_per_half=2)
    archive = ArchiveResource(root=str(config.archive_dir))
    with catalog.session() as session:
        inside = [add_product(session, "PI", NOON + timedelta(hours=h)) for h in (-23.9, -1, 0, 23.9)]
        add_product(session, "PI", NOON - timedelta(hours=24.1))  # outside the window
        add_product(session, "PI", NOON + timedelta(hours=24))  # the window ends before it
        add_product(session, "PI", NOON + timedelta(hours=3), outlier=True)  # outliers left out
        add_product(session, "CI", NOON + timedelta(hours=3))  # the clear ones feed CSM
        add_product(session, "PI", NOON + timedelta(hours=3), level="2")  # another level
        builder = StarfieldBuilder(session, archive, config, "polarized")
        candidates = builder.candidates(NOON)
        assert [p.id for p in candidates] == [p.id for p in inside]
        chosen, refusal = builder.choose(candidates, NOON)
        assert refusal is None and [p.id for p in chosen] == [p.id for p in inside]
        config.level3.starfield = StarfieldSettings(
            half_window_hours=24, min_inputs_per_half=3, impossible_after_hours=24 * 365 * 10
        )
        outcome = StarfieldBuilder(session, archive, config, "polarized").build(NOON, "2025-08-01-12:00")
        assert outcome.status == "refused" and outcome.path is None
        assert outcome.reason == (
            "PSM 2025-08-01T12:00: 2 PIM before, the minimum is 3; 2 PIM after, the minimum is 3 (PIM within 24 h)"
        )
        [row] = session.scalars(select(ModelRefusal)).all()
        assert (row.product_code, row.observatory, row.reference_time, row.reason) == ("PS", "M", NOON, outcome.reason)
        assert session.scalars(select(ProductFile).where(ProductFile.file_type == "PS")).all() == []


def test_mosaics_wait_for_the_bracketing_starfield_models_then_take_the_pair(config, catalog):
    archive = ArchiveResource(root=str(config.archive_dir))
    slot = NOON + timedelta(minutes=4) - timedelta(seconds=3)
    when = slot + timedelta(minutes=3, seconds=40)
    with catalog.session() as session:
        add_product(session, "CI", when, slot=slot)
        [outcome] = BackgroundSubtractedProcessor(session, archive, config).process_window(
            NOON, NOON + timedelta(hours=1)
        )
        assert outcome.status == "waiting" and outcome.code == "CT" and outcome.path is None
        assert STARFIELD_WAITING_REASON in outcome.reason and "CSM" in outcome.reason
        # One model before it only: still waiting (the pair must bracket it).
        add_product(session, "CS", NOON, state="created")
        processor = BackgroundSubtractedProcessor(session, archive, config)
        assert processor.process_window(NOON, NOON + timedelta(hours=1))[0].status == "waiting"
        # The pair: it is made from them (the files do not exist: it fails, past the selection).
        add_product(session, "CS", NOON + timedelta(days=1), state="created")
        [outcome] = BackgroundSubtractedProcessor(session, archive, config).process_window(
            NOON, NOON + timedelta(hours=1)
        )
        assert outcome.status == "failed"
        assert [(i["code"], i["origin"]) for i in outcome.inputs] == [
            ("CI", "pipeline"),
            ("CS", "pipeline"),
            ("CS", "pipeline"),
        ]
        assert session.scalars(select(ProductFile).where(ProductFile.file_type == "CT")).all() == []


def test_bootstrap_starfield_models_are_valid_sky_maps(tmp_path):
    when = datetime(2025, 7, 31)
    paths = synthesize_starfield_models(tmp_path, [when], map_scale=4.0)
    assert sorted(p.name for p in paths) == [f"PUNCH_L3_{c}M_20250731000000_v1.fits" for c in ("CS", "PS")]
    for path in paths:
        code = path.name.split("_")[2][:2]
        assert delivered_kind(path).name == "starfield"
        validate_calibration_file(path, "M", code, level="3", mosaic_shape=(512, 512))
    with pytest.raises(CalibrationError, match="named CSM, expected PSM"):
        validate_calibration_file(paths[1] if "CSM" in paths[1].name else paths[0], "M", "PS", level="3")
