"""Level 2 trefoil mosaics: each ready group of late Level 1 frames to a ``PTM``/``CTM`` and its layers.

The science is punchbowl's ``level2_core_flow`` (one call per group returns the mosaic and the
per-camera layers ``XP{n}``/``XR{n}`` that Level 3 consumes); this module plans the groups
(``members.plan_groups``), selects each frame's mask and the alphas file, skips groups whose inputs
did not change, flags incomplete groups, and records every input as lineage. A group is catalogued
by its slot (``acquisition_time`` of its rows is the slot's start): a mosaic remade with a member
that arrived later replaces the earlier one even though its DATE-OBS (the mean of its inputs) moves.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from punchpipe_assets.calibration.select import installed_calibration, select_installed, select_mask
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.level0.metadata import parse_fits_time
from punchpipe_assets.level2.grouping import CycleGrid, Decision, Group, MemberState
from punchpipe_assets.level2.members import PlannedGroup, plan_groups
from punchpipe_assets.partitions import MISSION_EPOCH
from punchpipe_assets.products import catalog_product, describe_file, product_fingerprint
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile, utcnow

# Bumped whenever the way a mosaic is made changes; part of every mosaic's fingerprint.
LEVEL2_CODE_VERSION = "level2-v1"
MOSAIC_CODES = {"polarized": "PT", "clear": "CT"}
LAYER_CODES = {"polarized": "XP", "clear": "XR"}


@dataclass
class GroupOutcome:
    """What happened to one group."""

    kind: str
    slot_start: datetime
    status: str  # made | unchanged | waiting | failed | empty
    decision: Decision
    reason: str | None = None
    deadline: datetime | None = None
    outputs: list[dict] = field(default_factory=list)  # {"path", "sha256", "code", "obs"}
    inputs: list[dict] = field(default_factory=list)  # describe_file of every input
    missing: dict[str, str] = field(default_factory=dict)  # member (e.g. "PZ2") -> state: reason

    @property
    def flagged(self) -> bool:
        """Made from an incomplete group."""
        return self.decision is Decision.INCOMPLETE and self.status in ("made", "unchanged")


def cycle_grid(config: PipelineConfig) -> CycleGrid:
    """Return the cadence slots of the configuration."""
    settings = config.level2
    return CycleGrid(
        MISSION_EPOCH + timedelta(seconds=settings.cycle_offset_seconds), timedelta(seconds=settings.cycle_seconds)
    )


def reduced_trefoil(downsample: int = 1):
    """Return punchbowl's trefoil frame (4096x4096), every ``downsample``-th pixel: its WCS and shape."""
    from punchpipe_assets.calibration.bootstrap import reduced_trefoil as trefoil

    return trefoil(downsample)


def run_level2_flow(
    paths: Sequence[str], masks: Sequence[str | None], polarized: bool, config: PipelineConfig, alphas: str | None
) -> list:
    """One call of punchbowl's ``level2_core_flow``, as the control segment makes it (voters empty)."""
    from punchbowl.level2.flow import level2_core_flow

    settings = config.level2
    wcs, shape = reduced_trefoil(settings.trefoil_downsample)
    return level2_core_flow(
        [str(path) for path in paths],
        voter_filenames=[[] for _ in paths],
        polarized=polarized,
        trefoil_wcs=wcs.deepcopy(),
        trefoil_shape=shape,
        rolloff_width=settings.rolloff_width,
        rolloff_strength=settings.rolloff_strength,
        trim_edges_px=settings.trim_edges_px,
        alphas_file=alphas,
        image_masks=list(masks),
    )


def member_name(member: tuple[str, str]) -> str:
    """Return a member as its product name: ``("2", "PZ")`` -> ``PZ2``."""
    return f"{member[1]}{member[0]}"


def usable_members(group: Group) -> dict[tuple[str, str], ProductFile]:
    """Return the present frames punchbowl will merge.

    For polarized groups, only cameras with all of M, Z, P (``level2_core_flow`` drops a camera
    whose triplet is incomplete).
    """
    if group.kind == "clear":
        return dict(group.frames)
    cameras = {obs for obs, _ in group.frames}
    complete = {obs for obs in cameras if all((obs, code) in group.frames for code in ("PM", "PZ", "PP"))}
    return {member: frame for member, frame in group.frames.items() if member[0] in complete}


class GroupProcessor:
    """Makes one product (and its layers) per ready group of a window; subclasses call punchbowl.

    Parameters
    ----------
    session
        Catalog session (the caller commits).
    archive
        Where files are written.
    config
        The configuration.
    run_id
        The Dagster run, recorded with each product.
    now
        The time of the decisions (naive UTC).

    """

    level = "2"
    code_version = LEVEL2_CODE_VERSION
    kinds: tuple[str, ...] = ("polarized", "clear")
    quick = False

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        config: PipelineConfig,
        run_id: str | None = None,
        now: datetime | None = None,
    ) -> None:
        self.session, self.archive, self.config, self.run_id = session, archive, config, run_id
        self.now = now or utcnow()
        self.file_version = config.level0.file_version
        self._installed: dict = {}

    @property
    def wait(self) -> timedelta:
        """How long an incomplete group waits."""
        return timedelta(hours=self.config.level2.incomplete_wait_hours)

    def installed(self, obs: str):
        """Installed calibration of a camera (or ``M``), read once."""
        if obs not in self._installed:
            self._installed[obs] = installed_calibration(self.session, obs, self.archive)
        return self._installed[obs]

    def alphas(self, when: datetime) -> ProductFile | None:
        """Return the alphas file for a time, by the selection rule (None: no scaling)."""
        _, rows = select_installed(self.installed("M").get("AL", []), when, bracketing=False)
        return rows[0] if rows else None

    def process_window(self, start: datetime, end: datetime, partition_key: str | None = None) -> list[GroupOutcome]:
        """Make, confirm or leave waiting every group whose slot ends in ``[start, end)``."""
        grid = cycle_grid(self.config)
        outcomes = []
        for kind in self.kinds:
            for planned in plan_groups(self.session, grid, kind, start, end, self.now, self.wait, quick=self.quick):
                outcomes.append(self.process_group(grid, planned, partition_key))
        return outcomes

    def process_group(self, grid: CycleGrid, planned: PlannedGroup, partition_key: str | None) -> GroupOutcome:
        """Make the product of one planned group, unless it waits or its inputs did not change."""
        group = planned.group
        outcome = GroupOutcome(
            group.kind, grid.start(group.slot), "waiting", planned.decision, deadline=planned.deadline
        )
        outcome.missing = {member_name(m): f"{state.value}: {reason}" for m, (state, reason) in group.missing.items()}
        if planned.decision is Decision.WAIT:
            pending = [m for m, (state, _) in group.missing.items() if state is MemberState.PENDING]
            outcome.reason = f"{len(group.missing)} of {len(group.members)} members missing; " + (
                f"waiting for {', '.join(map(member_name, pending))}"
                if pending
                else f"waiting until {planned.deadline:%Y-%m-%dT%H:%M}"
            )
            return outcome
        used = self.usable(group)
        if not used:
            outcome.status, outcome.reason = "empty", "no member can be merged (no camera with a complete triplet)"
            return outcome
        frames = [used[m] for m in sorted(used)]
        calibration = self.calibration(frames, outcome.slot_start)
        outcome.inputs = [describe_file(p) for p in frames + [c for c in calibration if c is not None]]
        left_out = sorted(set(group.frames) - set(used))
        flags = self.flags(group, left_out) if planned.decision is Decision.INCOMPLETE else []
        fingerprint = product_fingerprint(
            self.code_version,
            self.file_version,
            self.settings_fingerprint(),
            [p.sha256 for p in frames],
            [c.sha256 if c is not None else None for c in calibration],
            flags,
        )
        existing = self.existing_rows(group.kind, outcome.slot_start)
        if existing and all(row.fingerprint == fingerprint and self.archive.holds_product(row) for row in existing):
            outcome.status = "unchanged"
            outcome.outputs = [self.describe_output(row) for row in existing]
            return outcome
        try:
            cubes = self.make_cubes(group.kind, frames, calibration)
        except Exception as error:  # noqa: BLE001 - a failed group is recorded, the others go on
            outcome.status = "failed"
            outcome.reason = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=3)
            return outcome
        outcome.outputs = self.store(
            group.kind, outcome.slot_start, cubes, frames, calibration, fingerprint, flags, existing, partition_key
        )
        outcome.status = "made"
        return outcome

    def usable(self, group: Group) -> dict[tuple[str, str], ProductFile]:
        """Return the present members the flow will merge."""
        return usable_members(group)

    def settings_fingerprint(self) -> dict:
        """Return the settings a product depends on."""
        return self.config.level2.model_dump(exclude={"incomplete_wait_hours"})

    def calibration(self, frames: Sequence[ProductFile], when: datetime) -> list[ProductFile | None]:
        """Every frame's mask, then the alphas file."""
        masks = [select_mask(self.session, f.observatory, f.date_obs, self.installed(f.observatory)) for f in frames]
        return [*masks, self.alphas(when)]

    def make_cubes(self, kind: str, frames: Sequence[ProductFile], calibration: Sequence[ProductFile | None]) -> list:
        """Run punchbowl on one group: ``[mosaic, layers...]``."""
        masks, alphas = calibration[:-1], calibration[-1]
        return run_level2_flow(
            [self.archive.absolute(f.path) for f in frames],
            [str(self.archive.absolute(m.path).with_suffix(".bin")) if m is not None else None for m in masks],
            kind == "polarized",
            self.config,
            str(self.archive.absolute(alphas.path)) if alphas is not None else None,
        )

    @staticmethod
    def flags(group: Group, left_out: Sequence[tuple[str, str]]) -> list[str]:
        """Return the flags of a product made from an incomplete group."""
        flags = [f"incomplete group: {len(group.frames)} of {len(group.members)} members"]
        flags += [
            f"{member_name(m)} missing ({state.value}: {reason})"
            for m, (state, reason) in sorted(group.missing.items())
        ]
        if left_out:
            flags.append(f"left out (incomplete triplet): {', '.join(map(member_name, left_out))}")
        return flags

    def product_codes(self, kind: str) -> tuple[str, ...]:
        """Return the codes a group of a kind makes (mosaic, layers)."""
        return MOSAIC_CODES[kind], LAYER_CODES[kind]

    def existing_rows(self, kind: str, slot_start: datetime) -> list[ProductFile]:
        """Find the catalogued products of a group (by its slot, not its DATE-OBS)."""
        return list(
            self.session.scalars(
                select(ProductFile).where(
                    ProductFile.level == self.level,
                    ProductFile.file_type.in_(self.product_codes(kind)),
                    ProductFile.acquisition_time == slot_start,
                    ProductFile.state == "created",
                )
            )
        )

    def describe_output(self, row: ProductFile) -> dict:
        """Describe an output as the metadata lists it."""
        return {"path": row.path, "sha256": row.sha256, "code": row.file_type, "obs": row.observatory}

    def store(
        self,
        kind: str,
        slot_start: datetime,
        cubes: Sequence,
        frames: Sequence[ProductFile],
        calibration: Sequence[ProductFile | None],
        fingerprint: str,
        flags: list[str],
        existing: list[ProductFile],
        partition_key: str | None,
    ) -> list[dict]:
        """Write a group's products atomically, catalogue them with their lineage, drop replaced ones."""
        by_key = {(row.file_type, row.observatory): row for row in existing}
        inputs = [f for f in frames] + [c for c in calibration if c is not None]
        written = []
        for index, cube in enumerate(cubes):
            code, obs = str(cube.meta["TYPECODE"].value), str(cube.meta["OBSCODE"].value)
            for flag in flags:
                cube.meta.history.add_now("punchpipe", flag[:60])
            date_obs = parse_fits_time(cube.meta["DATE-OBS"].value)
            path = self.archive.product_path(self.level, code, obs, date_obs, self.file_version)
            sha256 = self.archive.write_cube(cube, path, skip_stats=False)
            row = by_key.pop((code, obs), None)
            stored = self.archive.relative(path)
            if row is not None and row.path != stored:
                self.archive.absolute(row.path).unlink(missing_ok=True)
            parents = inputs if index == 0 else [p for p in inputs if p.observatory in (obs, "M")]
            row = catalog_product(
                self.session,
                row,
                code=code,
                obs=obs,
                date_obs=date_obs,
                file_version=self.file_version,
                path=stored,
                sha256=sha256,
                fingerprint=fingerprint,
                parents=parents,
                acquisition_time=slot_start,
                partition_key=partition_key,
                run_id=self.run_id,
                level=self.level,
            )
            row.flags = "; ".join(flags)[:4000] or None
            written.append(self.describe_output(row))
        for row in by_key.values():  # a layer of a camera no longer merged
            self.remove(row)
        return written

    def remove(self, row: ProductFile) -> None:
        """Delete a replaced product: its file, its lineage rows and its catalogue row."""
        self.archive.absolute(row.path).unlink(missing_ok=True)
        self.session.execute(
            delete(FileRelationship).where(
                or_(FileRelationship.child_id == row.id, FileRelationship.parent_id == row.id)
            )
        )
        self.session.delete(row)


def mosaic_processor_factory(config: PipelineConfig, archive: ArchiveResource, run_id: str | None) -> Callable:
    """Return a function making the Level 2 processor of a session."""
    return lambda session: GroupProcessor(session, archive, config, run_id)


def output_paths(outcomes: Sequence[GroupOutcome]) -> list[Path]:
    """Every output path of some outcomes (root-relative)."""
    return [Path(o["path"]) for outcome in outcomes for o in outcome.outputs]
