"""Calibration files: external assets per kind and camera (or mosaic), reported by the calibration sensor.

They share the hourly partitions of the products they calibrate. A partition holds no file of
its own: the calibration sensor reports a delivery in exactly the partitions whose products it
changes, so that Dagster's staleness of Level 1 follows the selection rule partition by partition
(one unpartitioned asset would mark every partition stale at each delivery).
"""

import dagster as dg

from punchpipe_assets.calibration.kinds import DELIVERED_KINDS
from punchpipe_assets.cameras import CAMERA_BY_OBS, Camera
from punchpipe_assets.partitions import hourly_partitions

#: Asset-name suffix of files of the whole constellation (observatory ``M``).
MOSAIC_SLUG = "mosaic"


def calibration_key(kind: str, camera: Camera | str) -> dg.AssetKey:
    """Return the asset key of one kind of calibration file of a camera (or observatory code).

    E.g. ``calibration_vignetting_wfi1``, ``calibration_alphas_mosaic``.
    """
    obs = camera.obs if isinstance(camera, Camera) else camera
    slug = CAMERA_BY_OBS[obs].slug if obs in CAMERA_BY_OBS else MOSAIC_SLUG
    return dg.AssetKey(f"calibration_{kind}_{slug}")


calibration_specs = [
    dg.AssetSpec(
        calibration_key(kind.name, obs),
        group_name="calibration",
        description=f"{kind.name} calibration files ({', '.join(sorted(set(kind.codes.values())))}) of "
        f"observatory {obs}, delivered and versioned. A partition is reported when a delivery changes "
        "the files its hour's products are made with.",
        partitions_def=hourly_partitions,
        kinds={"csv" if kind.suffix == ".csv" else "fits"},
        tags={"calibration_kind": kind.name, "observatory": obs},
    )
    for kind in DELIVERED_KINDS.values()
    for obs in kind.observatories
]
