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
        # One more than exists before: refused with the reason, recorded in the catalog, tried again by then.
        config.level3.fcorona = FCoronaSettings(half_window_hours=2, min_inputs_per_half=3, impossible_after_hours=1e5)
        outcome = FCoronaBuilder(session, archive, config, WFI[0], "clear").build(NOON, "2025-08-01-12:00")
        assert outcome.status == "refused" and outcome.deadline == NOON + timedelta(hours=2 + 1e5)
        assert outcome.reason == (
            "CF1 2025-08-01T12:00: 2 layers before, the minimum is 3; 2 layers after, the minimum is 3 (XR1 within 2 h)"
        )
        [refusal_row] = session.scalars(select(ModelRefusal)).all()
        assert (refusal_row.product_code, refusal_row.observatory, refusal_row.reference_time) == ("CF", "1", NOON)
        assert refusal_row.status == "refused" and refusal_row.reason == outcome.reason


def test_a_refused_model_is_impossible_once_its_window_has_passed_for_good(config, catalog):
    # The window of 12:00 ended at 14:00 on 2025-08-01, long over twelve hours ago: no more layers can come.
    config.level3.fcorona = FCoronaSettings(half_window_hours=2, min_inputs_per_half=3)
    archive = ArchiveResource(root=str(config.archive_dir))
    with catalog.session() as session:
        add_layer(session, "1", "XR", NOON - timedelta(minutes=8))
        outcome = FCoronaBuilder(session, archive, config, WFI[0], "clear").build(NOON, "2025-08-01-12:00")
        assert outcome.status == "impossible" and outcome.deadline is None and outcome.path is None
        assert outcome.reason.startswith("CF1 2025-08-01T12:00: 1 layers before, the minimum is 3")
        assert "impossible: its window ended more than 12 h ago" in outcome.reason
        [row] = session.scalars(select(ModelRefusal)).all()
        assert (row.status, row.reason, row.reference_time) == ("impossible", outcome.reason, NOON)


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


def test_consumers_take_the_nearest_model_once_the_grid_point_on_the_other_side_is_impossible(config, catalog):
    archive = ArchiveResource(root=str(config.archive_dir))
    layer_time = NOON + timedelta(hours=1)  # between the grid points 12:00 and 00:00 (spacing 12 h)
    with catalog.session() as session:
        [own] = [model("1", NOON, "created")[1]]
        own.path, own.sha256, own.fingerprint = "3/CF1/noon.fits", "noon", "x"
        session.add(own)
        session.flush()

        def models_for(when):
            return SubtractedMosaicProcessor(session, archive, config).models_for("CF", "1", when)

        assert models_for(layer_time) == ([], None)  # the model after may still come: wait
        # A refusal that may still be cured, or an impossible model elsewhere on the grid, changes nothing.
        for status, when in (("refused", NOON + timedelta(hours=12)), ("impossible", NOON + timedelta(hours=24))):
            session.add(
                ModelRefusal(
                    level="3", product_code="CF", observatory="1", reference_time=when, status=status, reason="x"
                )
            )
        session.flush()
        assert models_for(layer_time) == ([], None)
        # The grid point after the layer is impossible: the model before stands for both, flagged.
        refusal = session.scalars(select(ModelRefusal).where(ModelRefusal.status == "refused")).one()
        refusal.status = "impossible"
        session.flush()
        pair, flag = models_for(layer_time)
        assert [p.id for p in pair] == [own.id, own.id]
        assert flag == "nearest model CF1 only: the model of 2025-08-02T00:00 is impossible"
        # Before the model: the grid point at or before the layer (00:00) must be impossible instead.
        earlier = NOON - timedelta(hours=1)
        assert models_for(earlier) == ([], None)
        session.add(
            ModelRefusal(
                level="3",
                product_code="CF",
                observatory="1",
                reference_time=NOON - timedelta(hours=12),
                status="impossible",
                reason="x",
            )
        )
        session.flush()
        pair, flag = models_for(earlier)
        assert [p.id for p in pair] == [own.id, own.id] and "2025-08-01T00:00" in flag
        # Another camera's models are not taken.
        assert SubtractedMosaicProcessor(session, archive, config).models_for("CF", "2", layer_time) == ([], None)
