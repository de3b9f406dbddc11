"""Calibration kinds: which files the instrument team delivers, for which cameras, and their names.

The instrument team delivers calibration files as versioned PUNCH products, all at level 1 and
named ``PUNCH_L1_{code}{obs}_{YYYYmmddHHMMSS}_v{version}.{fits|bin}``. This module knows, for
punchbowl 0.0.25, which kinds exist, for which cameras and polarizations, and which
``level1_early_core_flow`` argument each one feeds (``CALIBRATION_KINDS``, ``calibration_codes_for``),
and how names and versions are read (``parse_calibration_name``, ``version_key``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: Pixels on a side of every PUNCH camera; punchbowl's mask reader accepts nothing else.
SCIENCE_SIZE = 2048
#: Edge of one PSF patch; the value of punchbowl's ``generate_psf_model_core_flow``.
PSF_PATCH_SIZE = 32
#: Distortion lookup-table bins per axis, as punchbowl's ``build_distortion_model`` makes them.
DISTORTION_BINS = 60
#: Polarization letters of Level 0 science product codes (PM PZ PP CR -> M Z P R).
POLARIZATIONS = ("M", "Z", "P", "R")
_ALL_OBS = ("1", "2", "3", "4")
_WFI_OBS = ("1", "2", "3")

_NAME = re.compile(
    r"^PUNCH_L(?P<level>[0123QHL])_(?P<code>[A-Z]{2})(?P<obs>[0-9MN])_(?P<time>\d{14})_v(?P<version>[^._]+)"
    r"\.(?P<suffix>fits|bin|csv)$"
)


class CalibrationError(ValueError):
    """A calibration file cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class CalibrationKind:
    """One kind of calibration file and how Level 1 uses it.

    Attributes
    ----------
    name
        Short name, e.g. ``"vignetting"``.
    codes
        Product code per polarization letter of the image it calibrates (``M``, ``Z``, ``P``,
        ``R``); polarization-independent kinds map every letter to the same code.
    observatories
        Cameras the kind exists for.
    bracketing_observatories
        Cameras for which two files bracketing the observation are used (punchbowl interpolates
        between them in time); every other camera uses one file.
    suffix
        File name suffix: ``.fits``, or ``.bin`` for masks.
    flow_arguments
        ``level1_early_core_flow`` keyword(s) the selected file(s) go to, in selection order.
    template
        Per product code, the punchbowl metadata template it is written with
        (``NormalizedMetadata.load_template(template + obs, "1")``); PSF codes use ``RG``, the
        only PSF template punchbowl has. Masks carry no metadata (``.bin``).
    level
        The product level of its files (``1``; ``2`` for the mosaics' alphas, ``Q`` for quick
        F-corona models, ``3`` for Level 3 F-corona models).

    """

    name: str
    codes: Mapping[str, str]
    observatories: tuple[str, ...]
    bracketing_observatories: tuple[str, ...]
    suffix: str
    flow_arguments: tuple[str, ...]
    template: Mapping[str, str]
    level: str = "1"

    @property
    def all_codes(self) -> tuple[str, ...]:
        """The distinct product codes of the kind, in polarization order."""
        return tuple(dict.fromkeys(self.codes.values()))

    @property
    def polarized(self) -> bool:
        """Whether each polarization has its own file."""
        return len(self.all_codes) > 1

    @property
    def bracketing(self) -> bool:
        """Whether the kind is ever used as a bracketing pair."""
        return bool(self.bracketing_observatories)

    def is_bracketing(self, obs: str) -> bool:
        """Whether a camera uses two bracketing files of this kind."""
        return obs in self.bracketing_observatories

    def code_for(self, typecode: str) -> str:
        """Return the product code calibrating an image, from its type code (``PM``) or polarization (``M``)."""
        return self.codes[typecode[-1]]


def _by_polarization(prefix: str, clear: str | None = None) -> dict[str, str]:
    codes = {pol: prefix + pol for pol in POLARIZATIONS}
    if clear is not None:
        codes["R"] = clear
    return codes


#: The calibration kinds the instrument team delivers, in the order Level 1 applies them.
#: Codes and rules follow punchbowl 0.0.25 (``punchbowl/data/data/Level1.yaml`` templates and the
#: control segment's ``punchbowl.auto.flows.level1`` queries):
#:
#: - quartic ``FM FZ FP FR``: every camera, matched on the image's polarization letter;
#: - vignetting ``GM GZ GP GR``: every camera; the control segment passes a second, later file
#:   only for NFI (``get_vignetting_function_paths``), and ``correct_vignetting_task``
#:   interpolates in time between the two (clamped, no extrapolation);
#: - PSF ``RM RZ RP RC`` (clear is ``RC``, not ``RR``): WFI only, the control segment skips NFI;
#:   the only PSF metadata template is ``RG?``;
#: - mask ``MS`` and distortion ``DS``: one per camera, for every polarization.
CALIBRATION_KINDS: Mapping[str, CalibrationKind] = {
    "quartic": CalibrationKind(
        "quartic",
        _by_polarization("F"),
        _ALL_OBS,
        (),
        ".fits",
        ("quartic_coefficient_path",),
        {code: code for code in _by_polarization("F").values()},
    ),
    "vignetting": CalibrationKind(
        "vignetting",
        _by_polarization("G"),
        _ALL_OBS,
        ("4",),
        ".fits",
        ("vignetting_function_path", "second_vignetting_function_path"),
        {code: code for code in _by_polarization("G").values()},
    ),
    "psf": CalibrationKind(
        "psf",
        _by_polarization("R", clear="RC"),
        _WFI_OBS,
        (),
        ".fits",
        ("psf_model_path",),
        {code: "RG" for code in _by_polarization("R", clear="RC").values()},
    ),
    "mask": CalibrationKind(
        "mask",
        dict.fromkeys(POLARIZATIONS, "MS"),
        _ALL_OBS,
        (),
        ".bin",
        ("mask_path",),
        {"MS": "MS"},
    ),
    "distortion": CalibrationKind(
        "distortion",
        dict.fromkeys(POLARIZATIONS, "DS"),
        _ALL_OBS,
        (),
        ".fits",
        ("distortion_path",),
        {"DS": "DS"},
    ),
}

#: Stray-light models ``SM SZ SP SR``: made by the pipeline itself
#: (``level1.stray_light.estimate_stray_light``), always used as the two bracketing models by
#: ``level1_late_core_flow``. Listed for selection; ``synthesize_calibration`` does not write them.
STRAY_LIGHT_KIND = CalibrationKind(
    "stray_light",
    _by_polarization("S"),
    _ALL_OBS,
    _ALL_OBS,
    ".fits",
    ("stray_light_before_path", "stray_light_after_path"),
    {code: code for code in _by_polarization("S").values()},
)

#: Alpha scalings of the trefoil inputs (punchbowl's ``apply_alpha``): one CSV for all cameras,
#: ``Prod Code,Alpha`` rows such as ``CR1,0.97``; data and uncertainty are divided by alpha.
ALPHAS_KIND = CalibrationKind(
    "alphas", dict.fromkeys(POLARIZATIONS, "AL"), ("M",), (), ".csv", ("alphas_file",), {}, "2"
)
#: QuickPUNCH F-corona models ``CFM``: made by the pipeline (``levelq_cfm``); bootstrap ones are
#: delivered until it has its own. Used as the two models before a mosaic (extrapolating).
QUICK_FCORONA_KIND = CalibrationKind(
    "quick_fcorona",
    dict.fromkeys(POLARIZATIONS, "CF"),
    ("M",),
    ("M",),
    ".fits",
    ("before_f_corona_model_path", "after_f_corona_model_path"),
    {"CF": "CF"},
    "Q",
)
#: Level 3 F-corona models ``PF{n}`` (polarized, 3 x mosaic) and ``CF{n}`` (clear) of each WFI camera, in the
#: trefoil frame: made by the pipeline (``level3_fcorona_*``); bootstrap ones are delivered until it has its
#: own. Used as the two models bracketing a Level 2 group by ``level3_PIM_CIM_flow``.
FCORONA_KIND = CalibrationKind(
    "fcorona",
    {"M": "PF", "Z": "PF", "P": "PF", "R": "CF"},
    _WFI_OBS,
    _WFI_OBS,
    ".fits",
    ("before_f_corona_model_paths", "after_f_corona_model_paths"),
    {"PF": "PF", "CF": "CF"},
    "3",
)
#: Level 3 starfield models ``PSM`` (polarized) and ``CSM`` (clear): sky maps (celestial CAR, stored with their
#: helioprojective WCS) made by the pipeline (``level3_starfield_*``); bootstrap ones are delivered until it has
#: its own. Used as the two models bracketing a ``PIM``/``CIM`` by ``level3_core_flow``.
STARFIELD_KIND = CalibrationKind(
    "starfield",
    {"M": "PS", "Z": "PS", "P": "PS", "R": "CS"},
    ("M",),
    ("M",),
    ".fits",
    ("before_starfield_path", "after_starfield_path"),
    {"PS": "PS", "CS": "CS"},
    "3",
)
#: Every kind the calibration sensor installs: the instrument team's files, the mosaics' alphas,
#: and bootstrap models (stray light, quick and Level 3 F-corona, starfield) that serve until the pipeline has its own.
DELIVERED_KINDS: Mapping[str, CalibrationKind] = {
    **CALIBRATION_KINDS,
    ALPHAS_KIND.name: ALPHAS_KIND,
    STRAY_LIGHT_KIND.name: STRAY_LIGHT_KIND,
    QUICK_FCORONA_KIND.name: QUICK_FCORONA_KIND,
    FCORONA_KIND.name: FCORONA_KIND,
    STARFIELD_KIND.name: STARFIELD_KIND,
}
_KIND_BY_CODE = {(kind.level, code): kind for kind in DELIVERED_KINDS.values() for code in kind.all_codes}


def kind_for_code(code: str, level: str = "1") -> CalibrationKind:
    """Return the calibration kind of a product code of a level.

    Raises
    ------
    CalibrationError
        If the code is no calibration product of that level.

    """
    try:
        return _KIND_BY_CODE[(level, code)]
    except KeyError:
        raise CalibrationError(f"{code!r} is not a calibration product code of level {level}") from None


def calibration_codes_for(typecode: str, obs: str) -> dict[str, str]:
    """Return the calibration product code of each kind an image needs.

    Parameters
    ----------
    typecode
        Level 0 type code of the image: ``PM``, ``PZ``, ``PP`` or ``CR``.
    obs
        Observatory ``1``-``4``.

    Returns
    -------
    dict[str, str]
        Kind name to product code, only for the kinds that exist for the camera, e.g.
        ``{"quartic": "FR", "vignetting": "GR", "psf": "RC", "mask": "MS", "distortion": "DS"}``.

    """
    return {name: kind.code_for(typecode) for name, kind in CALIBRATION_KINDS.items() if obs in kind.observatories}


def delivered_kind(name: str | Path) -> CalibrationKind:
    """Return the kind of a delivered file, from its name (``parse_calibration_name`` checks the rest)."""
    match = _NAME.match(Path(name).name)
    if match is None:
        raise CalibrationError(f"{Path(name).name}: not a PUNCH file name")
    return kind_for_code(match["code"], match["level"])


def parse_calibration_name(name: str | Path) -> tuple[str, str, datetime, str]:
    """Read a calibration file name.

    Parameters
    ----------
    name
        A file name or path, ``PUNCH_L1_{code}{obs}_{YYYYmmddHHMMSS}_v{version}.fits``. Masks are
        ``.bin`` files; their ``.fits`` name (how punchbowl's control segment catalogs them) is
        accepted too.

    Returns
    -------
    tuple[str, str, datetime, str]
        ``(code, obs, date_obs, version)``; ``date_obs`` is naive UTC.

    Raises
    ------
    CalibrationError
        If the name is no PUNCH level 1 calibration file name.

    """
    base = Path(name).name
    match = _NAME.match(base)
    if match is None:
        raise CalibrationError(f"{base}: not a PUNCH file name (PUNCH_L1_{{code}}{{obs}}_{{time}}_v{{version}}.fits)")
    code, obs = match["code"], match["obs"]
    levels = sorted({kind.level for kind in DELIVERED_KINDS.values()})
    if match["level"] not in levels:
        known = " or ".join(f"level {level}" for level in levels)
        raise CalibrationError(f"{base}: calibration files are {known}, not level {match['level']}")
    try:
        kind = kind_for_code(code, match["level"])
    except CalibrationError as error:
        raise CalibrationError(f"{base}: {error}") from None
    if obs not in kind.observatories:
        cameras = ", ".join(kind.observatories)
        raise CalibrationError(f"{base}: {kind.name} files exist only for observatories {cameras}")
    if match["suffix"] != "fits" and f".{match['suffix']}" != kind.suffix:
        raise CalibrationError(f"{base}: {kind.name} files end in {kind.suffix}")
    try:
        date_obs = datetime.strptime(match["time"], "%Y%m%d%H%M%S")
    except ValueError:
        raise CalibrationError(f"{base}: {match['time']} is not a valid time") from None
    return code, obs, date_obs, match["version"]


def version_key(version: str) -> tuple:
    """Return a sort key comparing file versions numerically where they are numeric.

    ``"10"`` sorts after ``"9"``; runs of digits compare as numbers and other characters as text,
    so ``"1a"`` sorts after ``"1"`` and before ``"2"``.
    """
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|\D+", version))
