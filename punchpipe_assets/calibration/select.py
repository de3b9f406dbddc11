"""The operational rule choosing calibration files (and models) for an observation, and its catalogue side.

Newest ``file_version`` first, then the latest ``date_obs`` not after the observation; for
bracketing kinds the nearest file at or before and the nearest one after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.calibration.kinds import (
    CALIBRATION_KINDS,
    calibration_codes_for,
    parse_calibration_name,
    version_key,
)
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import CalibrationDelivery, ProductFile, naive_utc


@dataclass(frozen=True)
class CalibrationCandidate:
    """One calibration file that may be chosen.

    Attributes
    ----------
    path
        Where the file is.
    code
        Product code, e.g. ``GM``.
    obs
        Observatory ``1``-``4``.
    date_obs
        Its DATE-OBS (naive UTC), as in its name.
    file_version
        Its file version, as in its name (``"1"``, ``"10"``, ``"0j"``).

    """

    path: Path
    code: str
    obs: str
    date_obs: datetime
    file_version: str

    @classmethod
    def from_path(cls, path: str | Path) -> CalibrationCandidate:
        """Return the candidate described by its PUNCH file name."""
        code, obs, date_obs, version = parse_calibration_name(path)
        return cls(Path(path), code, obs, date_obs, version)


def select_calibration(
    candidates: Sequence[CalibrationCandidate], observation_time: datetime, bracketing: bool
) -> list[CalibrationCandidate]:
    """Choose the calibration file(s) for one observation by the operational rule.

    Parameters
    ----------
    candidates
        Files of one product code and one camera.
    observation_time
        The observation's DATE-OBS (naive UTC, or aware).
    bracketing
        Whether the kind uses two files bracketing the observation for this camera
        (``CalibrationKind.is_bracketing``).

    Returns
    -------
    list[CalibrationCandidate]
        Single-file kinds: ``[]`` or the one file with the newest ``file_version`` among files
        dated at or before the observation, and within that version the latest ``date_obs``; a
        file dated after the observation is never used. Bracketing kinds: within the newest
        version that has any file, ``[before, after]`` (nearest at or before, nearest strictly
        after); only the nearest one when the other side has none; ``[]`` when there is none.

    Raises
    ------
    ValueError
        If the candidates mix product codes or cameras.

    """
    if len({(c.code, c.obs) for c in candidates}) > 1:
        raise ValueError("select_calibration needs candidates of one product code and one camera")
    when = naive_utc(observation_time)
    if not bracketing:
        usable = [c for c in candidates if naive_utc(c.date_obs) <= when]
        if not usable:
            return []
        return [max(usable, key=lambda c: (version_key(c.file_version), naive_utc(c.date_obs), str(c.path)))]
    if not candidates:
        return []
    newest = max(version_key(c.file_version) for c in candidates)
    pool = [c for c in candidates if version_key(c.file_version) == newest]
    before = [c for c in pool if naive_utc(c.date_obs) <= when]
    after = [c for c in pool if naive_utc(c.date_obs) > when]
    chosen = []
    if before:
        chosen.append(max(before, key=lambda c: (naive_utc(c.date_obs), str(c.path))))
    if after:
        chosen.append(min(after, key=lambda c: (naive_utc(c.date_obs), str(c.path))))
    return chosen


def early_flow_arguments(selection: Mapping[str, Sequence[CalibrationCandidate]]) -> dict[str, str | None]:
    """``level1_early_core_flow`` keyword arguments for selected calibration files.

    Parameters
    ----------
    selection
        Kind name (a key of ``CALIBRATION_KINDS``) to what ``select_calibration`` returned.

    Returns
    -------
    dict[str, str | None]
        For example ``{"vignetting_function_path": ".../GM4...", "second_vignetting_function_path":
        None, "mask_path": ".../MS4....bin", ...}``; a kind with no file maps its arguments to
        ``None`` (punchbowl then skips that step).

    """
    arguments: dict[str, str | None] = {}
    for name, chosen in selection.items():
        kind = CALIBRATION_KINDS[name]
        for index, argument in enumerate(kind.flow_arguments):
            if index < len(chosen):
                path = chosen[index].path
                # The mask reader wants the .bin file, whatever name the mask is catalogued under.
                arguments[argument] = str(path.with_suffix(kind.suffix))
            else:
                arguments[argument] = None
    return arguments


#: A camera's catalogued calibration files by product code, each as a candidate and its row.
InstalledCalibration = dict[str, list[tuple[CalibrationCandidate, ProductFile]]]


def installed_calibration(session: Session, obs: str, archive: ArchiveResource | None = None) -> InstalledCalibration:
    """Installed, selectable calibration files of a camera by product code.

    With ``archive``, the candidates carry this host's paths (for punchbowl); without, the
    catalogued root-relative ones (enough to compare selections).
    """
    rows = session.execute(
        select(ProductFile)
        .join(CalibrationDelivery, CalibrationDelivery.file_id == ProductFile.id)
        .where(ProductFile.observatory == obs, CalibrationDelivery.state.in_(("active", "superseded")))
    ).scalars()
    by_code: dict[str, list[tuple[CalibrationCandidate, ProductFile]]] = {}
    for product in rows:
        path = archive.absolute(product.path) if archive is not None else Path(product.path)
        candidate = CalibrationCandidate(
            path, product.file_type, product.observatory, product.date_obs, product.file_version
        )
        by_code.setdefault(product.file_type, []).append((candidate, product))
    return by_code


def select_installed(
    pairs: list[tuple[CalibrationCandidate, ProductFile]], when: datetime, bracketing: bool
) -> tuple[list[CalibrationCandidate], list[ProductFile]]:
    """``select_calibration`` on catalogued files of one code: the chosen candidates and their rows, in order."""
    chosen = select_calibration([candidate for candidate, _ in pairs], when, bracketing)
    return chosen, [next(product for candidate, product in pairs if candidate == c) for c in chosen]


def select_frame_calibration(
    session: Session,
    level0: ProductFile,
    available: InstalledCalibration | None = None,
) -> tuple[dict[str, list[CalibrationCandidate]], list[ProductFile]]:
    """Select every calibration file a Level 0 frame needs, by the operational rule.

    ``available``: the camera's installed files, when the caller selects for many frames.

    Returns
    -------
    tuple
        Kind name to the selected candidates, and the catalogue rows of all selected files.

    """
    available = available if available is not None else installed_calibration(session, level0.observatory)
    selection: dict[str, list[CalibrationCandidate]] = {}
    rows: list[ProductFile] = []
    for kind_name, code in calibration_codes_for(level0.file_type, level0.observatory).items():
        bracketing = CALIBRATION_KINDS[kind_name].is_bracketing(level0.observatory)
        selection[kind_name], chosen_rows = select_installed(available.get(code, []), level0.date_obs, bracketing)
        rows.extend(chosen_rows)
    return selection, rows


def select_mask(
    session: Session, obs: str, when: datetime, available: InstalledCalibration | None = None
) -> ProductFile | None:
    """Select the mask of a camera for a time, by the rule early Level 1 uses (one file, not after it).

    ``available``: the camera's installed files, when the caller selects for many frames.
    """
    available = available if available is not None else installed_calibration(session, obs)
    _, rows = select_installed(available.get("MS", []), when, bracketing=False)
    return rows[0] if rows else None


#: Catalogued models of one level, code and observatory, each as a candidate and its row.
ModelPairs = list[tuple[CalibrationCandidate, ProductFile]]


def catalogued_models(session: Session, level: str, code: str, obs: str) -> ModelPairs:
    """Models the pipeline made (state ``created``) and bootstrap models delivered (``active``)."""
    rows = session.scalars(
        select(ProductFile).where(
            ProductFile.level == level,
            ProductFile.file_type == code,
            ProductFile.observatory == obs,
            ProductFile.state.in_(("created", "active")),
        )
    )
    return [
        (CalibrationCandidate(Path(p.path), p.file_type, p.observatory, p.date_obs, p.file_version), p) for p in rows
    ]


def select_models(
    pairs: ModelPairs, when: datetime, rule: Callable[[Sequence[CalibrationCandidate], datetime], list]
) -> list[ProductFile]:
    """Select the models ``rule`` picks for a time, the pipeline's own first.

    ``rule`` takes candidates and the time and returns the chosen ones (two for every model kind).
    Models the pipeline made take precedence: bootstrap models (delivered, state ``active``) are
    considered only when the pipeline's own do not give two. Returns the chosen rows, or ``[]``.
    """
    own = [pair for pair in pairs if pair[1].state == "created"]
    for pool in (own, pairs) if own else (pairs,):
        chosen = rule([candidate for candidate, _ in pool], when)
        if len(chosen) >= 2:
            return [next(row for candidate, row in pool if candidate == choice) for choice in chosen]
    return []


def select_latest_two(
    candidates: Sequence[CalibrationCandidate], observation_time: datetime
) -> list[CalibrationCandidate]:
    """Select the two newest models not after an observation (quick-look products: stray light, CFM).

    Quick-look cannot wait for the model after the observation; punchbowl extrapolates in time
    from the two (``allow_extrapolation=True``).

    Parameters
    ----------
    candidates
        Models of one product code and one camera.
    observation_time
        DATE-OBS of the frame (naive UTC).

    Returns
    -------
    list[CalibrationCandidate]
        ``[older, newer]`` within the newest file version that has two models at or before the
        observation; ``[]`` when no version has two.

    """
    usable = [c for c in candidates if c.date_obs <= observation_time]
    for version in sorted({version_key(c.file_version) for c in usable}, reverse=True):
        pool = sorted(
            (c for c in usable if version_key(c.file_version) == version), key=lambda c: (c.date_obs, str(c.path))
        )
        if len(pool) >= 2:
            return pool[-2:]
    return []
