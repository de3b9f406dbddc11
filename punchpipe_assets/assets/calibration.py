"""Calibration files: external assets per kind and camera, reported by the calibration sensor.

They share the hourly partitions of the products they calibrate. A partition holds no file of
its own: the calibration sensor reports a delivery in exactly the partitions whose products it
changes, so that Dagster's staleness of Level 1 follows the selection rule partition by partition
(one unpartitioned asset would mark every partition stale at each delivery).
"""

import dagster as dg

from punchpipe_assets.calibration import CALIBRATION_KINDS
from punchpipe_assets.cameras import CAMERA_BY_OBS, Camera
from punchpipe_assets.partitions import hourly_partitions


def calibration_key(kind: str, camera: Camera) -> dg.AssetKey:
    """The asset key of one kind of calibration file of one camera, e.g. ``calibration_vignetting_wfi1``."""
    return dg.AssetKey(f"calibration_{kind}_{camera.slug}")


calibration_specs = [
    dg.AssetSpec(
        calibration_key(kind.name, CAMERA_BY_OBS[obs]),
        group_name="calibration",
        description=f"{kind.name} calibration files ({', '.join(sorted(set(kind.codes.values())))}) of "
        f"observatory {obs}, delivered by the instrument team and versioned. A partition is reported "
        "when a delivery changes the files its hour's products are made with.",
        partitions_def=hourly_partitions,
        kinds={"fits"},
    )
    for kind in CALIBRATION_KINDS.values()
    for obs in kind.observatories
]
