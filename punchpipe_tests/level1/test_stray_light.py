"""Stray-light models through Dagster at small size: refusal below 51 inputs, the wait and give-up, automation.

Models themselves need 2048-pixel frames (punchbowl's assumption): the science tier makes them
(``test_late.py::test_full_size_stray_light_models_recover_the_ramp_and_late_level1_uses_them``).
Here every model is refused before punchbowl is called, so small frames do.
"""

import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from punchpipe_assets.config import StrayLightSettings
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.level1.assets import (
    level1_early_key,
    level1_late_key,
    level1_quick_key,
    level1_stray_light_key,
)
from punchpipe_assets.partitions import daily_partitions, hourly_partitions
from punchpipe_assets.resources import ArchiveResource
from punchpipe_tests.chain import hours, materialize
from punchpipe_tests.level1.test_early import CAMERA
from punchpipe_tests.level1.test_late import catalogue_early_frames, metadata, synthesize_early_frames

FRAME_SIZE = 64  # refused models never reach punchbowl: the frames only need to exist
POLARIZED = ("XM", "XZ", "XP")
STRAY_LIGHT = level1_stray_light_key(CAMERA)


def early_frames(config, catalog, start: datetime, count: int, codes=("XR",), cadence=timedelta(minutes=4)) -> None:
    """Write and catalogue ``count`` early frames of each code from ``start`` (each code 10 s after the one before).

    A refused model never opens a frame, and punchbowl's writer takes about half a second a frame:
    one real frame of each code is synthesized, the others are byte copies of it under their own
    names (their catalogued checksums are those of the bytes on disk).
    """
    archive = ArchiveResource(root=str(config.archive_dir))
    paths = []
    for offset, code in enumerate(codes):
        first = start + timedelta(seconds=10 * offset)
        (real,) = synthesize_early_frames(Path(config.archive_dir), CAMERA, first, 1, cadence, FRAME_SIZE, codes=[code])
        paths.append(real)
        for index in range(1, count):
            copy = archive.product_path("1", code, CAMERA.obs, first + index * cadence, "1")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(real, copy)
            paths.append(copy)
    catalogue_early_frames(catalog, archive, paths)


def model_outcomes(result: dg.ExecuteInProcessResult, instance, partition: str) -> tuple[dict, dict, list[str]]:
    """Return the materialization metadata, the ``frames_made`` check's metadata and the run log's warnings."""
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "frames_made" and check.severity == dg.AssetCheckSeverity.WARN
    warnings = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.level == logging.WARNING and e.user_message.startswith("PUNCH_L1_S")
    ]
    return metadata(instance, STRAY_LIGHT, partition), {k: v.value for k, v in check.metadata.items()}, warnings


@pytest.mark.parametrize("backend", ["sqlite"])  # no storage under test: the rule and where it is recorded
def test_models_below_51_inputs_are_refused_with_the_reason_where_operators_look(config, catalog, instance):
    """A model needs 51 clear frames, or 51 matched M/Z/P triplets (not 51 polarized frames), as punchbowl does.

    One XP short of 51 triplets refuses all three polarized models, though 152 polarized frames
    exist; at exactly 51 the count passes and the next rule (a span over 6 hours) speaks instead.
    The reason is in the metadata (``not_made``), the ``frames_made`` check and the run log.
    """
    assert StrayLightSettings().min_frames == 51
    day, partition = datetime(2025, 8, 1), "2025-08-01"
    # 50 clear frames, 51 XM and XZ, 50 XP: 09:00 to 12:20 at a 4-minute cadence (under 6 hours).
    early_frames(config, catalog, day + timedelta(hours=9), 50, codes=("XR", "XP"))
    early_frames(config, catalog, day + timedelta(hours=9), 51, codes=("XM", "XZ"))
    result = materialize(config, instance, [STRAY_LIGHT], [partition])
    made, check, warnings = model_outcomes(result, instance, partition)
    names = {code: f"PUNCH_L1_{code}{CAMERA.obs}_20250801120000_v1.fits" for code in ("SR", "SM", "SZ", "SP")}
    assert made["frames_made"] == 0 and made["models_refused"] == 4 and made["outputs"] == []
    reasons = {f["level0"]: (f["status"], f["reason"]) for f in made["not_made"]}
    clear = "50 clear frames in the window, the minimum is 51"
    triplets = "50 M/Z/P triplets in the window, the minimum is 51"
    assert reasons == {
        names["SR"]: ("refused", clear),
        **{names[code]: ("refused", triplets) for code in ("SM", "SZ", "SP")},
    }
    assert check["frames_not_made"] == 4
    assert {f["frame"]: f["reason"] for f in check["not_made"]} == {name: r for name, (_, r) in reasons.items()}
    assert sorted(warnings) == sorted(f"{name}: refused: {reason}" for name, (_, reason) in reasons.items())
    assert len(made["input_level1_early_files"]) == 50 + 51 + 51 + 50

    # The 51st clear frame and XP: the count no longer refuses them (the span, under 6 hours, does).
    early_frames(config, catalog, day + timedelta(hours=9, minutes=200), 1, codes=("XR", "XP"))
    result = materialize(config, instance, [STRAY_LIGHT], [partition])
    made, check, _ = model_outcomes(result, instance, partition)
    assert made["models_refused"] == 4
    for refused in made["not_made"]:
        assert "minimum" not in refused["reason"], refused
        assert refused["reason"].startswith("inputs span 3:20:") and "more than 6:00:00" in refused["reason"]


def evaluate(definitions, instance, keys, cursor, when: datetime) -> tuple[dict[dg.AssetKey, set[str]], object]:
    """One Declarative Automation evaluation at ``when``: the partitions requested per asset, and the cursor."""
    result = dg.evaluate_automation_conditions(
        defs=definitions,
        instance=instance,
        asset_selection=dg.AssetSelection.assets(*keys),
        cursor=cursor,
        evaluation_time=when.replace(tzinfo=UTC),
    )
    return {key: set(result.get_requested_partitions(key)) for key in keys}, result.cursor


@pytest.mark.parametrize("backend", ["sqlite"])
def test_stray_light_waits_for_its_day_then_refuses_with_the_reason_and_stops_past_the_lookback(
    config, catalog, instance
):
    """The model of a day waits while the day goes on (its later early hours do not exist yet).

    Once the day is over it gives up waiting: it is requested with what exists and refused with
    the reason (too few frames), then not requested again; an early hour of the day arriving
    late within ``automation.lookback_days`` requests it again, beyond it nothing does.
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    day = datetime(now.year, now.month, now.day) - timedelta(days=1)  # yesterday: every hour of it is past
    partition, definitions, early = f"{day:%Y-%m-%d}", build_definitions(config), level1_early_key(CAMERA)
    requested, cursor = evaluate(definitions, instance, [STRAY_LIGHT], None, day + timedelta(hours=14))  # baseline
    assert requested == {STRAY_LIGHT: set()}
    early_frames(config, catalog, day + timedelta(hours=10), 12, codes=("XR", *POLARIZED))
    materialize(config, instance, [early], hours(day + timedelta(hours=10), 1))

    for hour in (14, 23.5):  # the day goes on: its later hours may still bring frames
        requested, cursor = evaluate(definitions, instance, [STRAY_LIGHT], cursor, day + timedelta(hours=hour))
        assert requested == {STRAY_LIGHT: set()}, hour

    requested, cursor = evaluate(definitions, instance, [STRAY_LIGHT], cursor, day + timedelta(hours=24.5))
    assert requested == {STRAY_LIGHT: {partition}}  # the day is over: made with what exists
    result = materialize(config, instance, [STRAY_LIGHT], [partition])
    made, check, _ = model_outcomes(result, instance, partition)
    assert made["models_refused"] == 4 and check["frames_not_made"] == 4
    assert {f["reason"] for f in made["not_made"]} == {
        "12 clear frames in the window, the minimum is 51",
        "12 M/Z/P triplets in the window, the minimum is 51",
    }
    for hour in (25, 30, 47):  # refused: not asked again while nothing changes
        requested, cursor = evaluate(definitions, instance, [STRAY_LIGHT], cursor, day + timedelta(hours=hour))
        assert requested == {STRAY_LIGHT: set()}, hour

    # A late early hour of the day, two days on (inside the 3-day lookback): requested again.
    materialize(config, instance, [early], hours(day + timedelta(hours=11), 1))
    requested, cursor = evaluate(definitions, instance, [STRAY_LIGHT], cursor, day + timedelta(hours=48.5))
    next_day = f"{day + timedelta(days=1):%Y-%m-%d}"  # over now too: given up with no early hour at all
    assert requested == {STRAY_LIGHT: {partition, next_day}}
    # Three days on, past the lookback: a late early hour requests nothing (an operator's backfill).
    requested, cursor = evaluate(definitions, instance, [STRAY_LIGHT], cursor, day + timedelta(hours=72.5))
    assert partition not in requested[STRAY_LIGHT]
    materialize(config, instance, [early], hours(day + timedelta(hours=12), 1))
    requested, cursor = evaluate(definitions, instance, [STRAY_LIGHT], cursor, day + timedelta(hours=72.5))
    assert requested == {STRAY_LIGHT: set()}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_late_and_quick_hours_depend_on_the_models_of_the_right_days(config):
    """Late Level 1 of an hour depends on the models of its day, the day before and after; quick on the two before.

    ``TimeWindowPartitionMapping`` offsets count the hourly (downstream) partitions, not days.
    """
    definitions = build_definitions(config)
    for key, days in ((level1_late_key(CAMERA), (-1, 0, 1)), (level1_quick_key(CAMERA), (-2, -1))):
        mapping = definitions.get_assets_def(key).get_partition_mapping(STRAY_LIGHT)
        for hour in ("2025-08-05-00:00", "2025-08-05-10:00", "2025-08-05-23:00"):
            upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
                hourly_partitions.subset_with_partition_keys([hour]), hourly_partitions, daily_partitions
            )
            expected = [f"{datetime(2025, 8, 5) + timedelta(days=d):%Y-%m-%d}" for d in days]
            assert sorted(upstream.partitions_subset.get_partition_keys()) == expected, (key, hour)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_automation_requests_late_quick_and_stray_light_within_the_lookback_only(config, catalog, instance):
    """New early hours request late, quick Level 1 and the day's model inside ``automation.lookback_days``.

    Early hours one and two days old request their late and quick hours and their days' models
    (days that are over: no more waiting); an early hour beyond the lookback (five days old)
    requests nothing. A new model then requests the late hours it brackets (its day, the day before
    and after) and the quick hours of the two days after it, where early frames exist.
    """
    assert config.automation.lookback_days == 3
    now = datetime.now(UTC).replace(tzinfo=None)
    today = datetime(now.year, now.month, now.day)
    first, second, old = (today - timedelta(days=days, hours=-10) for days in (2, 1, 5))
    late, quick = level1_late_key(CAMERA), level1_quick_key(CAMERA)
    keys, definitions = [late, quick, STRAY_LIGHT], build_definitions(config)
    requested, cursor = evaluate(definitions, instance, keys, None, now)  # the baseline
    assert requested == dict.fromkeys(keys, set())

    for hour in (first, second, old):
        materialize(config, instance, [level1_early_key(CAMERA)], hours(hour, 1))
    requested, cursor = evaluate(definitions, instance, keys, cursor, now)
    recent = {*hours(first, 1), *hours(second, 1)}
    assert requested == {late: recent, quick: recent, STRAY_LIGHT: {f"{first:%Y-%m-%d}", f"{second:%Y-%m-%d}"}}
    requested, cursor = evaluate(definitions, instance, keys, cursor, now)
    assert requested == dict.fromkeys(keys, set())  # handled: asked once

    # The model of the first day: late hours of that day and the next; quick hours of the next day only.
    materialize(config, instance, [STRAY_LIGHT], [f"{first:%Y-%m-%d}"])
    requested, cursor = evaluate(definitions, instance, keys, cursor, now)
    assert requested == {late: recent, quick: set(hours(second, 1)), STRAY_LIGHT: set()}
    # A model beyond the lookback (an operator's backfill) requests nothing.
    materialize(config, instance, [STRAY_LIGHT], [f"{old:%Y-%m-%d}"])
    requested, cursor = evaluate(definitions, instance, keys, cursor, now)
    assert requested == dict.fromkeys(keys, set())
