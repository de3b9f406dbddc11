"""Level 3 F-corona models and PIM/CIM selection: window inputs, refusals, bracketing pairs, waiting (no punchbowl)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from punchpipe_assets.calibration.select import CalibrationCandidate
from punchpipe_assets.config import FCoronaSettings, Level3Settings
from punchpipe_assets.level3.fcorona import FCoronaBuilder, choose_window_inputs
from punchpipe_assets.level3.subtraction import WAITING_REASON, SubtractedMosaicProcessor, select_bracketing_models
from punchpipe_assets.resources import ArchiveResource
from punchpipe_assets.resources.catalog import ModelRefusal, ProductFile
from punchpipe_tests.chain import WFI

NOON = datetime(2025, 8, 1, 12)


@pytest.fixture
def backend() -> str:
    """Run these tests on SQLite only (they need no PostgreSQL)."""
    return "sqlite"


def test_settings_are_validated():
    assert Level3Settings().fcorona.spacing_hours == 12
    with pytest.raises(ValidationError, match="divide 24"):
        FCoronaSettings(spacing_hours=5)
    with pytest.raises(ValidationError, match="must not exceed"):
        FCoronaSettings(min_inputs_per_half=5, max_inputs_per_half=4)


def rows(start: datetime, count: int, minutes: int = 4) -> list[ProductFile]:
    return [ProductFile(id=i, date_obs=start + timedelta(minutes=minutes * i)) for i in range(count)]


def test_window_inputs_need_the_minimum_on_each_side_and_are_capped_per_side_reproducibly():
    settings = FCoronaSettings(min_inputs_per_half=3, max_inputs_per_half=5)
    before, after = rows(NOON - timedelta(hours=1), 10), rows(NOON, 2)
    assert choose_window_inputs(before, after, settings, NOON) == ([], "2 layers after, the minimum is 3")
    assert choose_window_inputs([], [], settings, NOON)[1] == (
        "0 layers before, the minimum is 3; 0 layers after, the minimum is 3"
    )
    after = rows(NOON, 4)
    chosen, refusal = choose_window_inputs(before, after, settings, NOON)
    assert refusal is None and len(chosen) == 9  # 5 of the 10 before (seeded), the 4 after
    assert chosen[5:] == after and all(p in before for p in chosen[:5])
    assert chosen == choose_window_inputs(before, after, settings, NOON)[0]  # the same inputs, the same choice


def add_layer(session, obs: str, code: str, when: datetime, **columns) -> ProductFile:
    row = ProductFile(
        level="2",
        file_type=code,
        observatory=obs,
        file_version="1",
        date_obs=when,
        acquisition_time=columns.pop("slot", when),
        path=f"2/{code}{obs}/{when:%Y%m%d%H%M%S}.fits",
        sha256=f"{code}{obs}{when:%H%M%S}",
        fingerprint="x",
        **columns,
    )
    session.add(row)
    session.flush()
    return row


def test_a_grid_point_takes_the_camera_layers_of_its_window_and_is_refused_with_too_few(config, catalog):
    config.level3.fcorona = FCoronaSettings(half_window_hours=2, min_inputs_per_half=2)
    archive = ArchiveResource(root=str(config.archive_dir))
    with catalog.session() as session:
        inside = [add_layer(session, "1", "XR", NOON + timedelta(minutes=m)) for m in (-119, -8, 0, 119)]
        add_layer(session, "1", "XR", NOON - timedelta(minutes=121))  # outside the window
        add_layer(session, "1", "XR", NOON + timedelta(hours=2))  # the window ends before it
        add_layer(session, "1", "XR", NOON + timedelta(minutes=30), outlier=True)  # outliers left out
        add_layer(session, "2", "XR", NOON + timedelta(minutes=30))  # another camera
        add_layer(session, "1", "XP", NOON + timedelta(minutes=30))  # the polarized layers
        builder = FCoronaBuilder(session, archive, config, WFI[0], "clear")
        candidates = builder.candidates(NOON)
        assert [p.id for p in candidates] == [p.id for p in inside]
        chosen, refusal = builder.choose(candidates, NOON)
        assert refusal is None and [p.id for p in chosen] == [p.id for p in inside]
        # One more than exists before: refused with the reason, recorded in the catalog.
        config.level3.fcorona = FCoronaSettings(half_window_hours=2, min_inputs_per_half=3)
        outcome = FCoronaBuilder(session, archive, config, WFI[0], "clear").build(NOON, "2025-08-01-12:00")
        assert outcome.status == "refused"
        assert outcome.reason == (
            "CF1 2025-08-01T12:00: 2 layers before, the minimum is 3; 2 layers after, the minimum is 3 (XR1 within 2 h)"
        )
        [refusal_row] = session.scalars(select(ModelRefusal)).all()
        assert (refusal_row.product_code, refusal_row.observatory, refusal_row.reference_time) == ("CF", "1", NOON)
        assert refusal_row.status == "refused" and refusal_row.reason == outcome.reason


def model(obs: str, when: datetime, state: str, code: str = "CF", version: str = "1") -> tuple:
    row = ProductFile(
        level="3", file_type=code, observatory=obs, date_obs=when, file_version=version, state=state, path=str(when)
    )
    return CalibrationCandidate(Path(str(when)), code, obs, when, version), row


def test_consumers_take_the_bracketing_pair_the_pipeline_own_first_never_mixed():
    bootstrap = [model("1", NOON - timedelta(days=2), "active"), model("1", NOON + timedelta(days=400), "active")]
    own = [model("1", NOON - timedelta(hours=12 * i), "created") for i in range(-1, 3)]  # 00:00 ... next 00:00
    when = NOON + timedelta(hours=1)
    assert [p.date_obs for p in select_bracketing_models(bootstrap + own, when)] == [NOON, NOON + timedelta(hours=12)]
    # Only a model before the time of the pipeline's own: a bootstrap pair, not one of each.
    later = NOON + timedelta(hours=13)
    assert [p.state for p in select_bracketing_models(bootstrap + own, later)] == ["active", "active"]
    # At a grid time the model of that time is the one before.
    assert [p.date_obs for p in select_bracketing_models(own, NOON)] == [NOON, NOON + timedelta(hours=12)]
    assert select_bracketing_models(own[:2], later) == []
    assert select_bracketing_models([], NOON) == []


def test_groups_wait_for_the_bracketing_models_when_none_exist(config, catalog):
    archive = ArchiveResource(root=str(config.archive_dir))
    slot = NOON + timedelta(minutes=4) - timedelta(seconds=3)
    with catalog.session() as session:
        for obs in "123":
            add_layer(session, obs, "XR", slot + timedelta(minutes=3, seconds=40), slot=slot)
        outcomes = SubtractedMosaicProcessor(session, archive, config).process_window(NOON, NOON + timedelta(hours=1))
        [outcome] = outcomes
        assert outcome.status == "waiting" and outcome.code == "CI" and outcome.path is None
        assert WAITING_REASON in outcome.reason and "CF1, CF2, CF3" in outcome.reason
        assert session.scalars(select(ProductFile).where(ProductFile.level == "3")).all() == []
