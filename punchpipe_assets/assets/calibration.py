"""Calibration files: external assets per kind and camera, reported by the calibration sensor."""

import dagster as dg

from punchpipe_assets.calibration import CALIBRATION_KINDS
from punchpipe_assets.cameras import CAMERA_BY_OBS, Camera


def calibration_key(kind: str, camera: Camera) -> dg.AssetKey:
    """The asset key of one kind of calibration file of one camera, e.g. ``calibration_vignetting_wfi1``."""
    return dg.AssetKey(f"calibration_{kind}_{camera.slug}")


calibration_specs = [
    dg.AssetSpec(
        calibration_key(kind.name, CAMERA_BY_OBS[obs]),
        group_name="calibration",
        description=f"{kind.name} calibration files ({', '.join(sorted(set(kind.codes.values())))}) of "
        f"observatory {obs}, delivered by the instrument team and versioned.",
        kinds={"fits"},
    )
    for kind in CALIBRATION_KINDS.values()
    for obs in kind.observatories
]
