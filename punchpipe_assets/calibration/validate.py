"""Checks of a delivered calibration file before it is used, as punchbowl will read it."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np

from punchpipe_assets.calibration.kinds import SCIENCE_SIZE, CalibrationError, kind_for_code, parse_calibration_name
from punchpipe_assets.resources.catalog import naive_utc


def _check_metadata(
    name: str, header: Mapping, obs: str, code: str, version: str, date_obs: datetime, level: str = "1"
) -> None:
    expected = {"OBSCODE": obs, "TYPECODE": code, "LEVEL": level}
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
        if naive_utc(when).replace(microsecond=0) != date_obs:
            raise CalibrationError(f"{name}: DATE-OBS {stamp} does not match the time in its name")


def validate_alphas_file(path: Path) -> dict[str, float]:
    """Check an alphas CSV as punchbowl's ``apply_alpha`` reads it; return its scalings by product code.

    Raises
    ------
    CalibrationError
        If it does not parse, has no rows, names no camera product (``PM1`` ... ``CR3``) or has an
        alpha that is not a positive finite number.

    """
    import re

    name = Path(path).name
    try:
        rows = np.atleast_2d(np.loadtxt(path, delimiter=",", skiprows=1, dtype=str))
    except Exception as error:  # noqa: BLE001 - any failure to read is the reason
        raise CalibrationError(f"{name}: unreadable: {type(error).__name__}: {error}") from error
    if rows.size == 0 or rows.shape[1] != 2:
        raise CalibrationError(f"{name}: expected rows 'Prod Code,Alpha' after a header line")
    alphas = {}
    for code, value in rows:
        code = code.strip()
        if not re.fullmatch(r"[PC][MZPR][1-4]", code):
            raise CalibrationError(f"{name}: {code!r} is not a camera product code such as PM1 or CR3")
        try:
            alpha = float(value)
        except ValueError:
            raise CalibrationError(f"{name}: alpha of {code} is {value!r}, not a number") from None
        if not (np.isfinite(alpha) and alpha > 0):
            raise CalibrationError(f"{name}: alpha of {code} is {alpha}; images are divided by it")
        alphas[code] = alpha
    return alphas


def validate_calibration_file(
    path: Path,
    camera_obs: str,
    code: str,
    shape: tuple[int, int] = (SCIENCE_SIZE, SCIENCE_SIZE),
    level: str = "1",
    mosaic_shape: tuple[int, int] | None = None,
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
    level
        The file's product level (``2`` for alphas, ``Q`` for quick F-corona models, ``3`` for Level 3 ones).
    mosaic_shape
        Shape of the trefoil mosaics (models in the mosaic frame must have it); None: not checked.

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
    kind = kind_for_code(code, level)
    if not path.is_file():
        raise CalibrationError(f"{name}: unreadable: no such file")
    size = path.stat().st_size
    if kind.name == "alphas":
        validate_alphas_file(path)
        return

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
                if kind.name in ("quartic", "vignetting", "stray_light", "quick_fcorona", "fcorona", "starfield"):
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

    _check_metadata(name, header, camera_obs, code, version, date_obs, level)
    if kind.name == "quick_fcorona":
        if data.ndim != 2 or (mosaic_shape is not None and data.shape != tuple(mosaic_shape)):
            raise CalibrationError(f"{name}: data shape {data.shape}, the mosaics are {mosaic_shape}")
        if not np.isfinite(data).all():
            raise CalibrationError(f"{name}: data has non-finite values")
        return
    if kind.name == "fcorona":
        expected = None if mosaic_shape is None else ((3, *mosaic_shape) if code == "PF" else tuple(mosaic_shape))
        if data.ndim != (3 if code == "PF" else 2) or (expected is not None and data.shape != expected):
            raise CalibrationError(f"{name}: data shape {data.shape}, {code} models in the mosaic frame are {expected}")
        if not np.isfinite(data).all():
            raise CalibrationError(f"{name}: data has non-finite values")
        return
    if kind.name == "starfield":  # a sky map of its own size: 3 layers polarized, one clear
        if data.ndim != (3 if code == "PS" else 2) or (code == "PS" and data.shape[0] != 3):
            raise CalibrationError(f"{name}: data shape {data.shape}, {code} models are {'3 x ' * (code == 'PS')}a map")
        if not np.isfinite(data).all():
            raise CalibrationError(f"{name}: data has non-finite values")
        return
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
