"""Telemetry downlinks: external assets, one per spacecraft, reported by the landing sensor."""

import dagster as dg

from punchpipe_assets.cameras import CAMERAS, Camera


def telemetry_key(camera: Camera) -> dg.AssetKey:
    """Return the asset key of a spacecraft's downlinks."""
    return dg.AssetKey(f"telemetry_{camera.slug}")


telemetry_specs = [
    dg.AssetSpec(
        telemetry_key(camera),
        group_name="telemetry",
        description=f"CCSDS downlink files of observatory {camera.obs} ({camera.instrument}), "
        "registered by the landing sensor.",
        kinds={"ccsds"},
    )
    for camera in CAMERAS
]
