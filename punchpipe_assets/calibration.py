"""Level 1 calibration files: their kinds, synthetic stand-ins, validation and the selection rule.

The instrument team delivers calibration files as versioned PUNCH products, all at level 1 and
named ``PUNCH_L1_{code}{obs}_{YYYYmmddHHMMSS}_v{version}.{fits|bin}``. This module knows, for
punchbowl 0.0.25:

- which kinds exist, for which cameras and polarizations, and which ``level1_early_core_flow``
  argument each one feeds (``CALIBRATION_KINDS``, ``calibration_codes_for``);
- how to write a plausible set for the simulator's cameras (``synthesize_calibration``; flight
  files are not public), in the formats punchbowl's Level 1 steps read;
- how to check a delivered file before it is used (``validate_calibration_file``);
- which file to use for an observation (``select_calibration``): the newest ``file_version``
  first, then the latest ``date_obs`` not after the observation; for bracketing kinds the
  nearest file at or before and the nearest one after.

File formats (what punchbowl's readers expect):

=============  ===========================================================================
kind           format
=============  ===========================================================================
quartic F?     PUNCH cube, HDU 1 (5, H, W) coefficients, highest power first
               (``perform_quartic_fit_task`` -> ``load_ndcube_from_fits``)
vignetting G?  PUNCH cube, HDU 1 (H, W) flat field the image is divided by
               (``correct_vignetting_task``); TELESCOP and OBSLAYR1 must match the image
PSF R?         regularizepsf ``ArrayPSFTransform`` FITS: image extensions ``coordinates``,
               ``transfer_real``, ``transfer_imag`` (``ArrayPSFTransform.load``, by suffix);
               PUNCH keywords in the otherwise empty primary header
mask MS        ``.bin``: ``np.packbits(mask.T)``, 2048x2048 hard-coded
               (``punchbowl.util.load_mask_file``); True where the sky is seen
distortion DS  FITS whose primary header holds a WCS with ``CPDIS1/2`` lookup tables in
               ``WCSDVARR`` extensions (``align_task``: ``WCS(hdul[0].header, hdul, key="A")``,
               else key " "); read only when ``do_align=True``
=============  ===========================================================================
"""

from __future__ import annotations

import copy
import io
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np

from punchpipe_assets.cameras import CAMERAS, Camera
from punchpipe_assets.resources.archive import ArchiveResource, write_atomically

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
    r"\.(?P<suffix>fits|bin)$"
)
_STRUCTURAL_KEYWORDS = {
    "SIMPLE",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "NAXIS3",
    "EXTEND",
    "EXTNAME",
    "PCOUNT",
    "GCOUNT",
    "CHECKSUM",
    "DATASUM",
}


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

    """

    name: str
    codes: Mapping[str, str]
    observatories: tuple[str, ...]
    bracketing_observatories: tuple[str, ...]
    suffix: str
    flow_arguments: tuple[str, ...]
    template: Mapping[str, str]

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
        """The product code calibrating an image, from its type code (``PM``) or polarization (``M``)."""
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

_KIND_BY_CODE = {code: kind for kind in (*CALIBRATION_KINDS.values(), STRAY_LIGHT_KIND) for code in kind.all_codes}


def kind_for_code(code: str) -> CalibrationKind:
    """The calibration kind of a product code.

    Raises
    ------
    CalibrationError
        If the code is no calibration product.

    """
    try:
        return _KIND_BY_CODE[code]
    except KeyError:
        raise CalibrationError(f"{code!r} is not a calibration product code") from None


def calibration_codes_for(typecode: str, obs: str) -> dict[str, str]:
    """The calibration product code of each kind an image needs.

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


# ---------------------------------------------------------------------------------------------
# Names, versions and the selection rule
# ---------------------------------------------------------------------------------------------


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
        """A candidate described by its PUNCH file name."""
        code, obs, date_obs, version = parse_calibration_name(path)
        return cls(Path(path), code, obs, date_obs, version)


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
    if match["level"] != "1":
        raise CalibrationError(f"{base}: calibration files are level 1, not level {match['level']}")
    code, obs = match["code"], match["obs"]
    try:
        kind = kind_for_code(code)
    except CalibrationError as error:
        raise CalibrationError(f"{base}: {error}") from None
    if obs not in kind.observatories:
        cameras = ", ".join(kind.observatories)
        raise CalibrationError(f"{base}: {kind.name} files exist only for observatories {cameras}")
    if match["suffix"] == "bin" and kind.suffix != ".bin":
        raise CalibrationError(f"{base}: {kind.name} files end in {kind.suffix}")
    try:
        date_obs = datetime.strptime(match["time"], "%Y%m%d%H%M%S")
    except ValueError:
        raise CalibrationError(f"{base}: {match['time']} is not a valid time") from None
    return code, obs, date_obs, match["version"]


def version_key(version: str) -> tuple:
    """A sort key comparing file versions numerically where they are numeric.

    ``"10"`` sorts after ``"9"``; runs of digits compare as numbers and other characters as text,
    so ``"1a"`` sorts after ``"1"`` and before ``"2"``.
    """
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|\D+", version))


def _naive_utc(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


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
    when = _naive_utc(observation_time)
    if not bracketing:
        usable = [c for c in candidates if _naive_utc(c.date_obs) <= when]
        if not usable:
            return []
        return [max(usable, key=lambda c: (version_key(c.file_version), _naive_utc(c.date_obs), str(c.path)))]
    if not candidates:
        return []
    newest = max(version_key(c.file_version) for c in candidates)
    pool = [c for c in candidates if version_key(c.file_version) == newest]
    before = [c for c in pool if _naive_utc(c.date_obs) <= when]
    after = [c for c in pool if _naive_utc(c.date_obs) > when]
    chosen = []
    if before:
        chosen.append(max(before, key=lambda c: (_naive_utc(c.date_obs), str(c.path))))
    if after:
        chosen.append(min(after, key=lambda c: (_naive_utc(c.date_obs), str(c.path))))
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


# ---------------------------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------------------------


def _plate_scale(obs: str, size: int) -> float:
    from punchpipe_assets.config import Level0Settings

    return float(Level0Settings().plate_scale_deg[obs]) * SCIENCE_SIZE / size


def _camera_wcs(camera: Camera, size: int, extra_axis: bool = False):
    """A helioprojective camera WCS: NFI centred on the Sun, WFI looking ~0.8 fields from it."""
    from astropy.wcs import WCS

    scale = _plate_scale(camera.obs, size)
    wcs = WCS(naxis=3 if extra_axis else 2)
    elongation = 0.0 if camera.instrument == "NFI" else 0.8 * size * scale
    if extra_axis:
        wcs.wcs.ctype = "HPLN-ARC", "HPLT-ARC", "PARAM"
        wcs.wcs.cunit = "deg", "deg", ""
        wcs.wcs.cdelt = scale, scale, 1.0
        wcs.wcs.crpix = size / 2 + 0.5, size / 2 + 0.5, 1.0
        wcs.wcs.crval = elongation, 0.0, 0.0
    else:
        wcs.wcs.ctype = "HPLN-ARC", "HPLT-ARC"
        wcs.wcs.cunit = "deg", "deg"
        wcs.wcs.cdelt = scale, scale
        wcs.wcs.crpix = size / 2 + 0.5, size / 2 + 0.5
        wcs.wcs.crval = elongation, 0.0
    return wcs


@lru_cache(maxsize=4)
def _radius(size: int) -> np.ndarray:
    y, x = np.ogrid[0:size, 0:size]
    centre = (size - 1) / 2
    return np.hypot((x - centre).astype(np.float32), (y - centre).astype(np.float32))


def synthetic_mask(camera: Camera, size: int = SCIENCE_SIZE) -> np.ndarray:
    """The synthetic field of view of a camera: True where the sky is seen.

    NFI: an annulus outside the occulter (the simulator's occulter radius ``size / 12``, with a
    15 % margin) and inside a round field stop. WFI: a round field stop that cuts the corners.
    """
    r = _radius(size)  # cached: never modify
    if camera.instrument == "NFI":
        return (r >= 1.15 * size / 12) & (r <= 0.49 * size)
    return r <= 0.68 * size


def synthetic_vignetting(camera: Camera, polarization: str, date_obs: datetime, size: int = SCIENCE_SIZE) -> np.ndarray:
    """A smooth, plausible flat field (float32, 1 on the optical axis, about 0.7-0.8 at the edge).

    The fall-off is quadratic in the distance from the image centre, a little deeper for WFI,
    differs slightly by polarizer, and deepens slowly with time (0.1 % of its depth per 30 days
    from 2025-01-01), so two files bracketing an observation differ. Outside the field of view it
    is 1, as punchbowl's own NFI vignetting builder leaves it.
    """
    depth = 0.3 if camera.instrument == "WFI" else 0.2
    depth *= {"M": 1.02, "Z": 1.0, "P": 0.98, "R": 1.0}[polarization]
    depth *= 1 + 0.001 * (_naive_utc(date_obs) - datetime(2025, 1, 1)).total_seconds() / (30 * 86400)
    r = _radius(size)
    flat = 1 - np.float32(depth) * (r / np.float32(r.max())) ** 2
    flat[~synthetic_mask(camera, size)] = 1
    return np.clip(flat, 0.05, None).astype(np.float32)


def synthetic_psf_transform(size: int = SCIENCE_SIZE, patch: int = PSF_PATCH_SIZE):
    """A valid, cheap PSF model: regularizepsf ``ArrayPSFTransform`` over the image's covering.

    The source PSF is an elliptical Gaussian (sigma 1.0 px on the optical axis, growing to 1.6 px
    at the edge, 10 % narrower across), quantized in 8 radial zones; the target is punchbowl's
    round Gaussian of FWHM 3.25 px; alpha 2.0 and epsilon 0.3 as in
    ``generate_psf_model_core_flow``. Both PSFs have unit sum, so the transform preserves flux.
    One transfer kernel is built per zone with ``ArrayPSFTransform.construct`` and reused for
    every patch of the zone, which avoids fitting stars (``generate_psf_model_core_flow`` needs
    star images and minutes).
    """
    from regularizepsf import ArrayPSF, ArrayPSFTransform
    from regularizepsf.util import IndexedCube, calculate_covering

    zones = 8
    coordinates = calculate_covering((size, size), patch)
    rows, cols = np.mgrid[0:patch, 0:patch].astype(float)
    centre = patch / 2

    def gaussian(sigma_row: float, sigma_col: float) -> np.ndarray:
        values = np.exp(-((rows - centre) ** 2 / (2 * sigma_row**2) + (cols - centre) ** 2 / (2 * sigma_col**2)))
        return (values / values.sum())[None]

    one = [(0, 0)]
    target = ArrayPSF(IndexedCube(one, gaussian(3.25 / 2.355, 3.25 / 2.355)))
    kernels = []
    for zone in range(zones):
        sigma = 1.0 + 0.6 * zone / (zones - 1)
        source = ArrayPSF(IndexedCube(one, gaussian(sigma, 0.9 * sigma)))
        kernels.append(ArrayPSFTransform.construct(source, target, 2.0, 0.3)._transfer_kernel.values[0])
    distance = np.hypot(coordinates[:, 0] + centre - size / 2, coordinates[:, 1] + centre - size / 2)
    zone_of = np.minimum((distance / distance.max() * zones).astype(int), zones - 1)
    cube = IndexedCube([(int(r), int(c)) for r, c in coordinates], np.asarray(kernels)[zone_of])
    return ArrayPSFTransform(cube)


def synthetic_distortion(camera: Camera, size: int = SCIENCE_SIZE):
    """A distortion WCS with all-zero ``CPDIS1/2`` lookup tables (the simulator has no distortion).

    The tables have the geometry of punchbowl's ``build_distortion_model``: 60x60 bins centred on
    the bins of the image.
    """
    from astropy.wcs import WCS, DistortionLookupTable

    scale = _plate_scale(camera.obs, size)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = "RA---ARC", "DEC--ARC"
    wcs.wcs.cunit = "deg", "deg"
    wcs.wcs.cdelt = -scale, scale
    wcs.wcs.crpix = size / 2 + 0.5, size / 2 + 0.5
    wcs.wcs.crval = 0.0, 0.0
    edges = np.linspace(0, size, DISTORTION_BINS + 1)
    centres = (edges[1:] + edges[:-1]) / 2
    step = centres[1] - centres[0]
    zeros = np.zeros((DISTORTION_BINS, DISTORTION_BINS), dtype=np.float32)
    wcs.cpdis1 = DistortionLookupTable(zeros, (0, 0), (centres[0], centres[0]), (step, step))
    wcs.cpdis2 = DistortionLookupTable(zeros.copy(), (0, 0), (centres[0], centres[0]), (step, step))
    return wcs


@lru_cache(maxsize=64)
def _template(product_code: str):
    from punchbowl.data import NormalizedMetadata

    return NormalizedMetadata.load_template(product_code, "1")


def _metadata(code: str, obs: str, date_obs: datetime, file_version: str):
    """``NormalizedMetadata.load_template`` (cached: it parses YAML each time) filled in."""
    kind = kind_for_code(code)
    meta = copy.deepcopy(_template(kind.template[code] + obs))
    meta["TYPECODE"] = code
    meta["DATE-OBS"] = date_obs.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    meta["DATE"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    meta["FILEVRSN"] = file_version
    meta.history.add_now("punchpipe calibration", "synthetic calibration for the simulated cameras")
    return meta


def _metadata_cards(meta, filename: str) -> list:
    """PUNCH metadata as header cards for a primary header (no structural or WCS keywords)."""
    meta["FILENAME"] = filename
    header = meta.to_fits_header(wcs=None)
    return [card for card in header.cards if card.keyword not in _STRUCTURAL_KEYWORDS]


def _punch_cube_hdul(cube, filename: str, tile_shape: tuple[int, ...], celestial_wcs=None):
    """The HDUs ``punchbowl.data.write_ndcube_to_fits`` writes for a PUNCHCube, with larger tiles.

    Same HDUs (empty primary, compressed data with the full PUNCH header, WCS extensions,
    provenance table) and same header (``NormalizedMetadata.to_fits_header`` with the celestial
    WCS); only the compression tiles are larger than punchbowl's one-row tiles, which makes
    writing and reading a 5x2048x2048 quartic cube about 3 times faster. Statistics are not
    computed (``skip_stats=True``) and there is no uncertainty layer.
    """
    from astropy.io import fits
    from punchbowl.data.punch_io import _make_provenance_hdu

    cube.meta["FILENAME"] = filename
    header = cube.meta.to_fits_header(wcs=cube.wcs, write_celestial_wcs=True, celestial_wcs=celestial_wcs)
    data = cube.data.astype(np.float32) if cube.data.dtype == np.float64 else cube.data
    hdul = cube.wcs.to_fits()
    hdul[0] = fits.PrimaryHDU()
    hdul.insert(1, fits.CompImageHDU(data=data, header=header, name="Primary data array", tile_shape=tile_shape))
    hdul.append(_make_provenance_hdu(cube.meta.provenance))
    return hdul


def _serialize(hdul) -> bytes:
    buffer = io.BytesIO()
    hdul.writeto(buffer, checksum=True)
    return buffer.getvalue()


def _psf_extension_bytes(transform) -> bytes:
    """The extensions of regularizepsf's FITS format (``ArrayPSFTransform.save``), serialized once.

    Same extension names and quantization; tiles of 1024 patches instead of one row each (one-row
    tiles make a 2048x2048 model take minutes to write and ~50 s to load).
    """
    from astropy.io import fits

    kernel = transform._transfer_kernel.values
    tiles = (min(1024, kernel.shape[0]), *kernel.shape[1:])
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(np.asarray(transform.coordinates, dtype=np.int32), name="coordinates"),
            fits.CompImageHDU(kernel.real, name="transfer_real", quantize_level=32, tile_shape=tiles),
            fits.CompImageHDU(kernel.imag, name="transfer_imag", quantize_level=32, tile_shape=tiles),
        ]
    )
    whole = _serialize(hdul)
    primary = len(_serialize(fits.HDUList([fits.PrimaryHDU()])))
    return whole[primary:]


def _hdul_writer(hdul) -> Callable[[Path], None]:
    return lambda temporary: hdul.writeto(temporary, checksum=True)


def _bytes_writer(*parts: bytes) -> Callable[[Path], None]:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            for part in parts:
                handle.write(part)

    return write


def _selected(kinds: Iterable[str] | None) -> set[str] | None:
    if kinds is None:
        return None
    chosen = set(kinds)
    known = set(CALIBRATION_KINDS) | {code for kind in CALIBRATION_KINDS.values() for code in kind.all_codes}
    unknown = chosen - known
    if unknown:
        raise ValueError(f"unknown calibration kinds or codes: {sorted(unknown)}; known: {sorted(known)}")
    return chosen


def synthesize_calibration(
    out_dir: Path,
    date_obs: datetime,
    file_version: str = "1",
    size: int = SCIENCE_SIZE,
    cameras: Sequence[Camera] = CAMERAS,
    kinds: Iterable[str] | None = None,
    *,
    archive_layout: bool = False,
) -> list[Path]:
    """Write a plausible set of calibration files for the simulator's cameras.

    Flight calibration files are not public. These match what the simulator makes (no
    distortion, no non-linearity) plus a plausible vignetting and PSF, in the formats punchbowl
    0.0.25's Level 1 steps read (see the module docstring). Every file is written atomically.

    Parameters
    ----------
    out_dir
        Folder to write to (flat), or the archive root when ``archive_layout``.
    date_obs
        DATE-OBS of every file written (naive UTC).
    file_version
        File version of every file written.
    size
        Image size in pixels. Masks exist only at 2048 (punchbowl's reader is hard-coded):
        at any other size they are skipped, or refused when asked for by ``kinds``.
    cameras
        Cameras to write for.
    kinds
        Kind names (``"quartic"``, ``"vignetting"``, ``"psf"``, ``"mask"``, ``"distortion"``)
        and/or product codes (``"GM"``) to write; ``None`` for all.
    archive_layout
        Write into ``{out_dir}/1/{code}{obs}/YYYY/MM/DD/`` (``ArchiveResource.product_path``).

    Returns
    -------
    list[Path]
        The files written, by camera, then kind, then polarization.

    Raises
    ------
    ValueError
        On an unknown kind or code, or a mask asked for at a size other than 2048.

    """
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning
    from punchbowl.data.punchcube import PUNCHCube
    from punchbowl.level1.quartic_fit import create_constant_quartic_coefficients

    out_dir = Path(out_dir)
    date_obs = _naive_utc(date_obs)
    selected = _selected(kinds)
    if selected is not None and size != SCIENCE_SIZE and ({"mask", "MS"} & selected):
        raise ValueError(f"masks exist only at {SCIENCE_SIZE}x{SCIENCE_SIZE} (punchbowl.util.load_mask_file)")
    archive = ArchiveResource(root=str(out_dir)) if archive_layout else None

    def wanted(kind: CalibrationKind, code: str) -> bool:
        return selected is None or kind.name in selected or code in selected

    def path_of(kind: CalibrationKind, code: str, obs: str) -> Path:
        if archive is not None:
            path = archive.product_path("1", code, obs, date_obs, file_version)
        else:
            path = out_dir / f"PUNCH_L1_{code}{obs}_{date_obs:%Y%m%d%H%M%S}_v{file_version}.fits"
        return path.with_suffix(kind.suffix)

    with warnings.catch_warnings():
        # punchbowl's long header comments are truncated by astropy; nothing is lost but the comment.
        # Set once around everything: warning filters are process-wide, threads included.
        warnings.simplefilter("ignore", VerifyWarning)
        cache: dict[object, object] = {}  # what every camera or file shares: WCS pairs, data, PSF
        written: list[Path] = []

        def wcs_pair(camera: Camera, extra_axis: bool) -> tuple:
            """Helioprojective WCS and its celestial twin, computed once per camera (costly)."""
            key = ("wcs", camera.obs, extra_axis)
            if key not in cache:
                from astropy.time import Time
                from punchbowl.data.wcs import calculate_celestial_wcs_from_helio

                helio = _camera_wcs(camera, size, extra_axis)
                shape = (5, size, size) if extra_axis else (size, size)
                cache[key] = helio, calculate_celestial_wcs_from_helio(helio, Time(date_obs), shape)
            return cache[key]

        for camera in cameras:
            for kind in CALIBRATION_KINDS.values():
                if camera.obs not in kind.observatories or (kind.name == "mask" and size != SCIENCE_SIZE):
                    continue
                first_polarization: dict[str, str] = {}
                for polarization, code in kind.codes.items():
                    first_polarization.setdefault(code, polarization)  # one file per code
                for code, polarization in first_polarization.items():
                    if not wanted(kind, code):
                        continue
                    path = path_of(kind, code, camera.obs)
                    meta = _metadata(code, camera.obs, date_obs, file_version)
                    if kind.name == "quartic":
                        if "quartic" not in cache:
                            cache["quartic"] = create_constant_quartic_coefficients((size, size)).astype(np.float32)
                        helio, celestial = wcs_pair(camera, True)
                        cube = PUNCHCube(data=cache["quartic"], wcs=helio, meta=meta)
                        writer = _hdul_writer(_punch_cube_hdul(cube, path.name, (1, min(64, size), size), celestial))
                    elif kind.name == "vignetting":
                        data = synthetic_vignetting(camera, polarization, date_obs, size)
                        helio, celestial = wcs_pair(camera, False)
                        cube = PUNCHCube(data=data, wcs=helio, meta=meta)
                        writer = _hdul_writer(_punch_cube_hdul(cube, path.name, (min(256, size), size), celestial))
                    elif kind.name == "psf":
                        if "psf" not in cache:
                            cache["psf"] = _psf_extension_bytes(synthetic_psf_transform(size))
                        primary = fits.PrimaryHDU()
                        primary.header.extend(_metadata_cards(meta, path.name))
                        writer = _bytes_writer(_serialize(fits.HDUList([primary])), cache["psf"])
                    elif kind.name == "mask":
                        # The writer punchbowl.util.load_mask_file documents.
                        writer = _bytes_writer(np.packbits(synthetic_mask(camera, size).T).tobytes())
                    else:  # distortion: the WCS and its tables in the primary header, as align_task reads it
                        hdul = synthetic_distortion(camera, size).to_fits()
                        hdul[0].header.extend(
                            [card for card in _metadata_cards(meta, path.name) if card.keyword not in hdul[0].header]
                        )
                        writer = _hdul_writer(hdul)
                    write_atomically(path, writer)
                    written.append(path)
    return written


def synthesize_stray_light_models(
    archive_root: Path,
    camera: Camera,
    date_obs: datetime,
    file_version: str = "1",
    size: int = SCIENCE_SIZE,
    n_crota_bins: int = 2,
    codes: Sequence[str] = ("SM", "SZ", "SP", "SR"),
    level: float = 1e-13,
) -> list[Path]:
    """Write small stand-in stray-light models (``S?``) into the archive, for tests at any size.

    Real models come from punchbowl's ``estimate_stray_light``, which needs 2048x2048 frames. These
    have the format ``remove_stray_light_task`` reads: a PUNCH cube of shape
    ``(n_crota_bins, size, size)`` with the ``S{pol}{obs}`` template (TELESCOP, OBSLAYR1) and
    DATE-AVG/BEG/END (the model's day). The level is a smooth radial ramp times ``level``,
    slightly different per bin and per day, so two models differ.

    Returns
    -------
    list[Path]
        The files written (``{archive_root}/1/{code}{obs}/YYYY/MM/DD/``).
    """
    from punchbowl.data.punchcube import PUNCHCube

    date_obs = _naive_utc(date_obs)
    archive = ArchiveResource(root=str(archive_root))
    ramp = 1 + _radius(size) / np.float32(_radius(size).max())
    drift = 1 + 0.01 * (date_obs - datetime(2025, 1, 1)).days
    data = np.stack([ramp * np.float32(level * drift * (1 + 0.1 * b)) for b in range(n_crota_bins)])
    written = []
    for code in codes:
        meta = _metadata(code, camera.obs, date_obs, file_version)
        for keyword, offset in (("DATE-BEG", -12), ("DATE-AVG", 0), ("DATE-END", 12)):
            meta[keyword] = (date_obs + timedelta(hours=offset)).strftime("%Y-%m-%dT%H:%M:%S")
        path = archive.product_path("1", code, camera.obs, date_obs, file_version)
        archive.write_cube(PUNCHCube(data=data.astype(np.float32), wcs=_camera_wcs(camera, size), meta=meta), path)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _check_metadata(name: str, header: Mapping, obs: str, code: str, version: str, date_obs: datetime) -> None:
    expected = {"OBSCODE": obs, "TYPECODE": code, "LEVEL": "1"}
    for keyword, value in expected.items():
        if keyword not in header:
            raise CalibrationError(f"{name}: header has no {keyword}")
        if str(header[keyword]).strip() != value:
            raise CalibrationError(f"{name}: {keyword} is {header[keyword]!r}, the name and camera say {value!r}")
    found_version = str(header.get("FILEVRSN", "")).strip()
    if found_version and found_version != version:
        raise CalibrationError(f"{name}: FILEVRSN is {found_version!r}, the name says {version!r}")
    stamp = str(header.get("DATE-OBS", "")).strip()
    if stamp:
        try:
            when = datetime.fromisoformat(stamp.replace(" ", "T"))
        except ValueError:
            raise CalibrationError(f"{name}: DATE-OBS {stamp!r} is not a time") from None
        if _naive_utc(when).replace(microsecond=0) != date_obs:
            raise CalibrationError(f"{name}: DATE-OBS {stamp} does not match the time in its name")


def validate_calibration_file(
    path: Path, camera_obs: str, code: str, shape: tuple[int, int] = (SCIENCE_SIZE, SCIENCE_SIZE)
) -> None:
    """Check that a calibration file can be used for a camera, as punchbowl will read it.

    Parameters
    ----------
    path
        The file.
    camera_obs
        Observatory ``1``-``4`` it is meant for.
    code
        Product code it is meant to be (``FM``, ``GR``, ``RC``, ``MS``, ``DS``, ...).
    shape
        Image shape of the camera (2048x2048 in flight; smaller in tests).

    Raises
    ------
    CalibrationError
        With the reason: name not matching ``code``/``camera_obs``; file unreadable or truncated
        (size, FITS checksums, decompression); data of the wrong shape for the camera or not
        finite (vignetting must be positive); OBSCODE, TYPECODE, LEVEL, FILEVRSN or DATE-OBS not
        matching the name (for PSF files, whose regularizepsf format has no PUNCH header, only
        when present).

    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    name = path.name
    name_code, name_obs, date_obs, version = parse_calibration_name(name)
    if (name_code, name_obs) != (code, camera_obs):
        raise CalibrationError(f"{name}: named {name_code}{name_obs}, expected {code}{camera_obs}")
    kind = kind_for_code(code)
    if not path.is_file():
        raise CalibrationError(f"{name}: unreadable: no such file")
    size = path.stat().st_size

    if kind.name == "mask":
        from punchbowl.util import load_mask_file

        if path.suffix != ".bin":
            raise CalibrationError(f"{name}: punchbowl reads masks from the packed .bin file, not {path.suffix}")
        if shape != (SCIENCE_SIZE, SCIENCE_SIZE):
            raise CalibrationError(f"{name}: masks are {SCIENCE_SIZE}x{SCIENCE_SIZE}, the camera is {shape}")
        expected = SCIENCE_SIZE * SCIENCE_SIZE // 8
        if size != expected:
            raise CalibrationError(f"{name}: unreadable: {size} bytes, a packed 2048x2048 mask has {expected}")
        mask = load_mask_file(str(path))
        if not mask.any():
            raise CalibrationError(f"{name}: mask hides every pixel")
        return

    if size == 0 or size % 2880:
        raise CalibrationError(f"{name}: unreadable: {size} bytes is not a whole number of FITS blocks (truncated?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # checksum mismatches, truncation
            warnings.filterwarnings("ignore", message=".*(CROTA|datfix|more axes).*")
            with fits.open(path, checksum=True) as hdul:
                hdul.verify("exception")
                if kind.name in ("quartic", "vignetting", "stray_light"):
                    header, data = hdul[1].header, np.asarray(hdul[1].data)
                elif kind.name == "psf":
                    header, data = hdul[0].header, None
                    coordinates = np.asarray(hdul["coordinates"].data)
                    real, imag = (np.asarray(hdul[n].data) for n in ("transfer_real", "transfer_imag"))
                else:  # distortion, read as align_task reads it
                    from astropy.wcs import WCS

                    header, data = hdul[0].header, None
                    try:
                        distortion = WCS(hdul[0].header, hdul, key="A")
                    except KeyError:
                        distortion = WCS(hdul[0].header, hdul, key=" ")
    except CalibrationError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to read is the reason
        raise CalibrationError(f"{name}: unreadable: {type(error).__name__}: {error}") from error

    if kind.name == "psf":
        if coordinates.ndim != 2 or coordinates.shape[1] != 2 or real.shape != imag.shape or real.ndim != 3:
            raise CalibrationError(f"{name}: not a regularizepsf ArrayPSFTransform (coordinates {coordinates.shape})")
        if real.shape[0] != coordinates.shape[0]:
            raise CalibrationError(f"{name}: {coordinates.shape[0]} coordinates for {real.shape[0]} kernels")
        from regularizepsf.util import calculate_covering

        expected = calculate_covering(shape, real.shape[1])
        if coordinates.shape != expected.shape or not np.array_equal(np.sort(coordinates, 0), np.sort(expected, 0)):
            raise CalibrationError(f"{name}: PSF patches do not cover a {shape[0]}x{shape[1]} image")
        if not (np.isfinite(real).all() and np.isfinite(imag).all()):
            raise CalibrationError(f"{name}: PSF transfer kernel is not finite")
        if "OBSCODE" in header or "TYPECODE" in header:
            _check_metadata(name, header, camera_obs, code, version, date_obs)
        return

    _check_metadata(name, header, camera_obs, code, version, date_obs)
    if kind.name == "distortion":
        tables = (distortion.cpdis1, distortion.cpdis2)
        if any(table is None for table in tables):
            raise CalibrationError(f"{name}: no CPDIS1/CPDIS2 distortion lookup tables in the primary header")
        for table in tables:
            if not np.isfinite(table.data).all():
                raise CalibrationError(f"{name}: distortion table is not finite")
            extent = np.asarray(table.crval) + np.asarray(table.cdelt) * (np.asarray(table.data.shape[::-1]) - 0.5)
            if np.any(extent > np.asarray(shape[::-1]) + np.asarray(table.cdelt)) or np.any(
                extent < np.asarray(shape[::-1]) / 2
            ):
                raise CalibrationError(f"{name}: distortion table spans {extent} px, the camera is {shape}")
        return

    expected_shape = (5, *shape) if kind.name == "quartic" else tuple(shape)
    if kind.name == "stray_light" and data.ndim == 3:
        expected_shape = (data.shape[0], *shape)
    if data.shape != expected_shape:
        raise CalibrationError(f"{name}: data shape {data.shape}, camera {camera_obs} needs {expected_shape}")
    if not np.isfinite(data).all():
        raise CalibrationError(f"{name}: data has non-finite values")
    if kind.name == "vignetting" and not (data > 0).all():
        raise CalibrationError(f"{name}: vignetting has zero or negative values (images are divided by it)")
