"""Synthetic calibration files: plausible stand-ins for the simulator's cameras (flight files are not public).

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

import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

from punchpipe_assets.calibration.fits_writing import (
    _bytes_writer,
    _hdul_writer,
    _metadata,
    _metadata_cards,
    _psf_extension_bytes,
    _punch_cube_hdul,
    _serialize,
)
from punchpipe_assets.calibration.kinds import (
    CALIBRATION_KINDS,
    DISTORTION_BINS,
    PSF_PATCH_SIZE,
    SCIENCE_SIZE,
    CalibrationKind,
)
from punchpipe_assets.cameras import CAMERAS, Camera
from punchpipe_assets.resources.archive import ArchiveResource, write_atomically
from punchpipe_assets.resources.catalog import naive_utc


def _plate_scale(obs: str, size: int) -> float:
    from punchpipe_assets.config import Level0Settings

    return float(Level0Settings().plate_scale_deg[obs]) * SCIENCE_SIZE / size


def _camera_wcs(camera: Camera, size: int, extra_axis: bool = False):
    """Make a helioprojective camera WCS: NFI centred on the Sun, WFI looking ~0.8 fields from it."""
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
    """Make the synthetic field of view of a camera: True where the sky is seen.

    NFI: an annulus outside the occulter (the simulator's occulter radius ``size / 12``, with a
    15 % margin) and inside a round field stop. WFI: a round field stop that cuts the corners.
    """
    r = _radius(size)  # cached: never modify
    if camera.instrument == "NFI":
        return (r >= 1.15 * size / 12) & (r <= 0.49 * size)
    return r <= 0.68 * size


def synthetic_vignetting(camera: Camera, polarization: str, date_obs: datetime, size: int = SCIENCE_SIZE) -> np.ndarray:
    """Make a smooth, plausible flat field (float32, 1 on the optical axis, about 0.7-0.8 at the edge).

    The fall-off is quadratic in the distance from the image centre, a little deeper for WFI,
    differs slightly by polarizer, and deepens slowly with time (0.1 % of its depth per 30 days
    from 2025-01-01), so two files bracketing an observation differ. Outside the field of view it
    is 1, as punchbowl's own NFI vignetting builder leaves it.
    """
    depth = 0.3 if camera.instrument == "WFI" else 0.2
    depth *= {"M": 1.02, "Z": 1.0, "P": 0.98, "R": 1.0}[polarization]
    depth *= 1 + 0.001 * (naive_utc(date_obs) - datetime(2025, 1, 1)).total_seconds() / (30 * 86400)
    r = _radius(size)
    flat = 1 - np.float32(depth) * (r / np.float32(r.max())) ** 2
    flat[~synthetic_mask(camera, size)] = 1
    return np.clip(flat, 0.05, None).astype(np.float32)


def synthetic_psf_transform(size: int = SCIENCE_SIZE, patch: int = PSF_PATCH_SIZE):
    """Make a valid, cheap PSF model: regularizepsf ``ArrayPSFTransform`` over the image's covering.

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
    """Make a distortion WCS with all-zero ``CPDIS1/2`` lookup tables (the simulator has no distortion).

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
    date_obs = naive_utc(date_obs)
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
