"""Bootstrap models: plausible stand-ins for the models the pipeline builds itself from days of data.

Stray-light (``S?``), F-corona (QuickPUNCH ``CFM``, Level 3 ``PF?``/``CF?``) and starfield
(``PSM``/``CSM``) models need days of data; these let late Level 1 and later levels run from the
first hour (in the demo and the tests).
Models the pipeline builds itself take precedence (see ``punchpipe_assets.calibration.select``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from punchpipe_assets.calibration.fits_writing import _metadata
from punchpipe_assets.calibration.kinds import SCIENCE_SIZE
from punchpipe_assets.calibration.synthesize import _camera_wcs, _radius
from punchpipe_assets.cameras import Camera
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import naive_utc


def synthesize_stray_light_models(
    archive_root: Path,
    camera: Camera,
    date_obs: datetime,
    file_version: str = "1",
    size: int = SCIENCE_SIZE,
    n_crota_bins: int = 2,
    codes: Sequence[str] = ("SM", "SZ", "SP", "SR"),
    level: float = 1e-13,
    *,
    archive_layout: bool = True,
) -> list[Path]:
    """Write stand-in stray-light models (``S?``) into the archive, or flat into a delivery folder.

    Real models come from punchbowl's ``estimate_stray_light``, which needs 2048x2048 frames. These
    have the format ``remove_stray_light_task`` reads: a PUNCH cube of shape
    ``(n_crota_bins, size, size)`` with the ``S{pol}{obs}`` template (TELESCOP, OBSLAYR1) and
    DATE-AVG/BEG/END (the model's day). The level is a smooth radial ramp times ``level``,
    slightly different per bin and per day, so two models differ.

    ``archive_layout=False`` writes ``{archive_root}/{name}`` (a calibration landing folder).

    Returns
    -------
    list[Path]
        The files written (``{archive_root}/1/{code}{obs}/YYYY/MM/DD/``).

    """
    from punchbowl.data.punchcube import PUNCHCube

    date_obs = naive_utc(date_obs)
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
        if not archive_layout:
            path = Path(archive_root) / path.name
        archive.write_cube(PUNCHCube(data=data.astype(np.float32), wcs=_camera_wcs(camera, size), meta=meta), path)
        written.append(path)
    return written


#: Days from the first to the last bootstrap stray-light model: late Level 1 needs a model on
#: either side of a frame, so a set bootstraps the observations of the year after its date.
BOOTSTRAP_SPAN = timedelta(days=400)
#: Level of bootstrap stray-light models (MSB): well below the faintest simulated corona (~1e-15).
BOOTSTRAP_STRAY_LIGHT = 1e-17


def reduced_trefoil(downsample: int = 1):
    """Return punchbowl's trefoil frame (4096x4096), every ``downsample``-th pixel: its WCS and shape."""
    from punchbowl.data.wcs import load_trefoil_wcs

    wcs, shape = load_trefoil_wcs()
    if downsample == 1:
        return wcs, tuple(shape)
    return wcs[::downsample, ::downsample], (shape[0] // downsample, shape[1] // downsample)


def synthesize_quick_fcorona_models(
    out_dir: Path, dates: Sequence[datetime], downsample: int = 1, file_version: str = "1", value: float = 1e-20
) -> list[Path]:
    """Write bootstrap QuickPUNCH F-corona models (``CFM``, level Q) in the trefoil frame.

    The F corona of a bootstrap model is a tiny constant (``value``, with a 1 % uncertainty):
    QuickPUNCH ``CTM`` made with it equals its ``CQM`` to within that constant. Not zero, not NaN:
    punchbowl stores data/uncertainty, so a zero model reloads with infinite uncertainty, and NaN
    would blank the mosaic. Models the pipeline builds (``levelq_cfm``) take precedence.
    """
    from astropy.nddata import StdDevUncertainty
    from punchbowl.data import NormalizedMetadata
    from punchbowl.data.punchcube import PUNCHCube

    wcs, shape = reduced_trefoil(downsample)
    archive = ArchiveResource(root=str(out_dir))
    written = []
    for when in dates:
        when = naive_utc(when)
        meta = NormalizedMetadata.load_template("CFM", "Q")
        for keyword in ("DATE-OBS", "DATE-BEG", "DATE-END", "DATE-AVG"):
            meta[keyword] = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        meta["FILEVRSN"] = file_version
        meta.history.add_now("punchpipe bootstrap", "bootstrap QuickPUNCH F-corona model (tiny constant)")
        data = np.full(shape, value, dtype=np.float32)
        cube = PUNCHCube(
            data=data, uncertainty=StdDevUncertainty(data * np.float32(0.01)), wcs=wcs.deepcopy(), meta=meta
        )
        path = Path(out_dir) / archive.product_path("Q", "CF", "M", when, file_version).name
        archive.write_cube(cube, path, skip_stats=False)
        written.append(path)
    return written


def synthesize_fcorona_models(
    out_dir: Path,
    cameras: Sequence[Camera],
    dates: Sequence[datetime],
    downsample: int = 1,
    file_version: str = "1",
    value: float = 1e-20,
) -> list[Path]:
    """Write bootstrap Level 3 F-corona models (``PF{n}`` 3 x mosaic, ``CF{n}`` mosaic) of WFI cameras.

    As the QuickPUNCH ones: a tiny constant F corona (``value``, 1 % uncertainty) in the trefoil
    frame reduced by ``downsample``, so a ``PIM``/``CIM`` made with two of them equals the merged
    layers to within that constant. Models the pipeline builds (``level3_fcorona_*``) take precedence.
    """
    from astropy.nddata import StdDevUncertainty
    from astropy.wcs.utils import add_stokes_axis_to_wcs
    from punchbowl.data import NormalizedMetadata
    from punchbowl.data.punchcube import PUNCHCube

    wcs, shape = reduced_trefoil(downsample)
    archive = ArchiveResource(root=str(out_dir))
    written = []
    for camera in cameras:
        for code in ("PF", "CF"):
            for when in dates:
                when = naive_utc(when)
                meta = NormalizedMetadata.load_template(f"{code}{camera.obs}", "3")
                for keyword in ("DATE-OBS", "DATE-BEG", "DATE-END", "DATE-AVG"):
                    meta[keyword] = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
                meta["FILEVRSN"] = file_version
                meta.history.add_now("punchpipe bootstrap", "bootstrap Level 3 F-corona model (tiny constant)")
                polarized = code == "PF"
                data = np.full((3, *shape) if polarized else shape, value, dtype=np.float32)
                cube = PUNCHCube(
                    data=data,
                    uncertainty=StdDevUncertainty(data * np.float32(0.01)),
                    wcs=add_stokes_axis_to_wcs(wcs.deepcopy(), 2) if polarized else wcs.deepcopy(),
                    meta=meta,
                )
                path = Path(out_dir) / archive.product_path("3", code, camera.obs, when, file_version).name
                archive.write_cube(cube, path, skip_stats=False)
                written.append(path)
    return written


def synthesize_starfield_models(
    out_dir: Path, dates: Sequence[datetime], file_version: str = "1", value: float = 1e-20, map_scale: float = 1.0
) -> list[Path]:
    """Write bootstrap Level 3 starfield models (``PSM`` 3 x map, ``CSM`` map): all-sky maps of a tiny constant.

    Real models (punchbowl's ``generate_starfield_background``) are celestial CAR maps of the sky the
    mosaics saw, stored with their helioprojective WCS (``calculate_helio_wcs_from_celestial``, as
    punchbowl does). These cover the whole sky at ``map_scale`` degrees per pixel, so they cover any
    mosaic on any date; their starfield is a tiny constant (``value``, 1 % uncertainty), so a
    ``PTM``/``CTM`` made with two of them equals its ``PIM``/``CIM`` to within that constant.
    Models the pipeline builds (``level3_starfield_*``) take precedence.
    """
    from astropy.nddata import StdDevUncertainty
    from astropy.wcs import WCS
    from punchbowl.data import NormalizedMetadata
    from punchbowl.data.punchcube import PUNCHCube
    from punchbowl.data.wcs import calculate_helio_wcs_from_celestial

    shape = (round(180 / map_scale), round(360 / map_scale))
    sky = WCS(naxis=2)
    sky.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    sky.wcs.crval = (180.0, 0.0)
    sky.wcs.cdelt = (-map_scale, map_scale)
    sky.wcs.ctype = ("RA---CAR", "DEC--CAR")
    sky.wcs.cunit = ("deg", "deg")
    sky.array_shape = shape
    archive = ArchiveResource(root=str(out_dir))
    written = []
    for code in ("PS", "CS"):
        for when in dates:
            when = naive_utc(when)
            meta = NormalizedMetadata.load_template(f"{code}M", "3")
            for keyword in ("DATE-OBS", "DATE-BEG", "DATE-END", "DATE-AVG"):
                meta[keyword] = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
            meta["FILEVRSN"] = file_version
            meta.history.add_now("punchpipe bootstrap", "bootstrap Level 3 starfield model (tiny constant)")
            data = np.full((3, *shape) if code == "PS" else shape, value, dtype=np.float32)
            helio = calculate_helio_wcs_from_celestial(sky, meta.astropy_time, shape)
            if code == "PS":
                from astropy.wcs.utils import add_stokes_axis_to_wcs

                helio = add_stokes_axis_to_wcs(helio, 2)
            cube = PUNCHCube(data=data, uncertainty=StdDevUncertainty(data * np.float32(0.01)), wcs=helio, meta=meta)
            path = Path(out_dir) / archive.product_path("3", code, "M", when, file_version).name
            archive.write_cube(cube, path, skip_stats=False)
            written.append(path)
    return written


def synthesize_delivery(
    out_dir: Path,
    date_obs: datetime,
    size: int = SCIENCE_SIZE,
    trefoil_downsample: int = 1,
    file_version: str = "1",
    cameras: Sequence[Camera] | None = None,
) -> list[Path]:
    """Write a whole delivery for the simulator's cameras: the calibration set and the bootstrap models.

    The calibration set is dated ``date_obs`` (``synthesize_calibration``). Bootstrap stray-light
    models of every WFI camera are dated a day before, at and ``BOOTSTRAP_SPAN`` after it (late
    Level 1 takes two that bracket a frame, quick Level 1 the two newest of the days before);
    bootstrap QuickPUNCH F-corona models 6 hours before and at it; bootstrap Level 3 F-corona
    models of every WFI camera, and bootstrap starfield models, at it and ``BOOTSTRAP_SPAN`` after
    (``PIM``/``CIM`` and ``PTM``/``CTM`` take two that bracket them).
    """
    from punchpipe_assets.calibration.synthesize import synthesize_calibration
    from punchpipe_assets.cameras import CAMERAS

    cameras = tuple(cameras or CAMERAS)
    out_dir = Path(out_dir)
    written = synthesize_calibration(out_dir, date_obs, file_version=file_version, size=size, cameras=cameras)
    for camera in cameras:
        if camera.instrument != "WFI":
            continue
        for when in (date_obs - timedelta(days=1), date_obs, date_obs + BOOTSTRAP_SPAN):
            written += synthesize_stray_light_models(
                out_dir,
                camera,
                when,
                file_version=file_version,
                size=size,
                level=BOOTSTRAP_STRAY_LIGHT,
                archive_layout=False,
            )
    written += synthesize_quick_fcorona_models(
        out_dir, [date_obs - timedelta(hours=6), date_obs], trefoil_downsample, file_version
    )
    wfi = [camera for camera in cameras if camera.instrument == "WFI"]
    written += synthesize_fcorona_models(
        out_dir, wfi, [date_obs, date_obs + BOOTSTRAP_SPAN], trefoil_downsample, file_version
    )
    written += synthesize_starfield_models(out_dir, [date_obs, date_obs + BOOTSTRAP_SPAN], file_version)
    written.append(synthesize_alphas(out_dir, date_obs, file_version))
    return written


def synthesize_alphas(out_dir: Path, date_obs: datetime, file_version: str = "1", alpha: float = 1.0) -> Path:
    """Write an alphas file (``PUNCH_L2_ALM_...csv``) scaling every WFI product by ``alpha`` (1: unchanged)."""
    from punchpipe_assets.resources.archive import write_atomically

    path = Path(out_dir) / f"PUNCH_L2_ALM_{naive_utc(date_obs):%Y%m%d%H%M%S}_v{file_version}.csv"
    rows = [f"{code}{obs},{alpha:.5f}" for obs in "123" for code in ("PM", "PZ", "PP", "CR")]
    write_atomically(path, lambda temporary: temporary.write_text("Prod Code,Alpha\n" + "\n".join(rows) + "\n"))
    return path
