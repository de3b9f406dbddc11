"""Level 0 metadata: settings, product code, position keywords and WCS filled through punchbowl's helpers."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from punchpipe_assets.config import Level0Settings
from punchpipe_assets.names import safe_name
from punchpipe_assets.resources.catalog import Packet, utcnow
from punchpipe_assets.telemetry.packets import PacketSet

if TYPE_CHECKING:
    from punchpipe_assets.level0.formation import Formation

# Bumped whenever the way a Level 0 file is formed changes; part of every file's fingerprint.
LEVEL0_CODE_VERSION = "level0-v2"
# Exposure starts this long after the packet timestamp (CCD clearing), as in punchbowl's control segment.
CLEARING_OFFSET = timedelta(seconds=3.8)
# Products are formed at the flight frame shape; reduced-size simulated frames stand in for it.
SCIENCE_SHAPE = (2048, 2048)


def build_level0_cube(
    formation: Formation, position_keywords: dict, settings: Level0Settings, packet_set: PacketSet, engineering: dict
):
    """Fill Level 0 metadata through punchbowl's template and helpers.

    ``engineering``: the decoded fields of the formation's filter-wheel and attitude packets, by packet id.
    Returns the cube and its quality flags.
    """
    camera, decoded, image, missing = formation.camera, formation.decoded, formation.image, formation.missing
    pfw, xact_before, xact_after = formation.pfw, formation.xact_before, formation.xact_after
    telemetry_names = formation.outcome.telemetry_files
    import punchbowl
    import quaternion  # noqa: F401 - registers np.quaternion, used by punchbowl's helpers
    from astropy import units as u
    from punchbowl.auto.flows.level0 import (
        determine_file_type,
        form_preliminary_wcs,
        organize_compression_and_acquisition_settings,
        organize_gain_info,
        unpack_acquisition_settings,
        unpack_compression_settings,
    )
    from punchbowl.data.punch_io import _update_statistics
    from punchbowl.data.punchcube import PUNCHCube
    from punchbowl.data.wcs import extract_crota_from_wcs

    definition = packet_set.by_kind("image")
    prefix = definition.name
    compression = unpack_compression_settings(int(decoded[f"{prefix}_HDR_COM_SET"][0]))
    acquisition = unpack_acquisition_settings(int(decoded[f"{prefix}_HDR_ACQ_SET"][0]))
    pfw_values = engineering[pfw.id]
    before = engineering[xact_before.id]
    after = engineering[xact_after.id]

    acquisition_time = decoded["timestamp"][0]
    observation_time = acquisition_time + CLEARING_OFFSET
    exposure = acquisition["EXPOSURE"] / 10.0 * (1 + acquisition["IMG_NUM"])
    observation_end = observation_time + timedelta(seconds=exposure)
    midpoint = observation_time + timedelta(seconds=exposure / 2)

    file_type = determine_file_type(pfw_values, False, None, SCIENCE_SHAPE)
    fits_info: dict = {"TYPECODE": file_type}
    fits_info |= organize_compression_and_acquisition_settings(compression, acquisition)
    fits_info |= organize_gain_info(camera.spacecraft_id)
    fits_info |= position_keywords
    fits_info |= {
        "PFWTIME": pfw.timestamp.isoformat(),
        "PFWSTAT": int(pfw_values["PFW_STATUS"]),
        "POSCURR": int(pfw_values["POSITION_CURR"]),
        "POSCMD": int(pfw_values["POSITION_CMD"]),
        "POSRAW": int(pfw_values["RESOLVER_POS_RAW"]),
        "POSRAW2": int(pfw_values["RESOLVER_POS_CORR"]),
    }
    fits_info |= {f"PFWPOS{i}": int(pfw_values[f"PRIMARY_RESOLVER_POSITION_{i}"]) for i in range(1, 6)}
    fits_info["RAWBITS"] = 19 if camera.instrument == "NFI" else 16
    if fits_info["ISSQRT"]:
        fits_info["BUNIT"] = "sqrt(DN)"
        fits_info["COMPBITS"] = round((fits_info["RAWBITS"] + int(np.log2(fits_info["SCALE"]))) / 2, 2)
        fits_info["DSATVAL"] = float(np.floor(np.sqrt((2**16 - 1) * fits_info["IMGCOUNT"] * fits_info["SCALE"])))
        fits_info["DESCRPTN"] = "PUNCH Level-0 data, square-root encoded DN values in camera coordinates"
    else:
        fits_info["BUNIT"] = "DN"
        fits_info["COMPBITS"] = fits_info["RAWBITS"]
        fits_info["DSATVAL"] = (2**16 - 1) * fits_info["IMGCOUNT"]
        fits_info["DESCRPTN"] = "PUNCH Level-0 data, DN values in camera coordinates"
    fits_info["COM_SET"] = int(decoded[f"{prefix}_HDR_COM_SET"][0])
    fits_info["ACQ_SET"] = int(decoded[f"{prefix}_HDR_ACQ_SET"][0])
    for key, when in (
        ("DATE-BEG", observation_time),
        ("DATE-END", observation_end),
        ("DATE-AVG", midpoint),
        ("DATE-OBS", midpoint),
        ("DATE", utcnow()),
    ):
        fits_info[key] = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    fits_info["FILEVRSN"] = settings.file_version
    fits_info["BOWLVRSN"] = punchbowl.__version__
    fits_info["NUM_PCKT"] = len(decoded[f"{prefix}_HDR_SEC"])
    fits_info["PCKTBYTE"] = int(sum(len(chunk) for chunk in decoded[f"{prefix}_IMG_DATA"]))

    position_info = {
        "spacecraft_id": camera.spacecraft_id,
        "datetime": observation_time,
        "interp_quat": _interpolate_attitude(xact_before, before, xact_after, after, observation_time),
    }
    wcs = form_preliminary_wcs(camera.obs, position_info, float(settings.plate_scale_deg[camera.obs]))
    binning = SCIENCE_SHAPE[1] // image.shape[1]
    if binning > 1:
        # punchbowl's preliminary WCS is that of a 2048-pixel frame; a smaller (simulated) frame stands
        # for the flight frame binned by the same factor, as punchbowl's own tests reduce the trefoil.
        wcs = wcs[::binning, ::binning]
    meta = _level0_template(f"{file_type}{camera.obs}")
    for key, value in fits_info.items():
        meta[key] = value
    cube = PUNCHCube(data=image, meta=meta, wcs=wcs)
    # punchbowl writes provenance as 40 ASCII characters: an unambiguous safe form (full names in the catalog).
    cube.meta.provenance = [safe_name(name) for name in telemetry_names]
    cube.meta.history.add_now("punchpipe level0", f"formed by punchpipe-dagster {LEVEL0_CODE_VERSION}")
    _update_statistics(cube, modify_inplace=True)
    # The expression punchbowl's to_fits_header uses for CROTA, without building a whole header.
    cube.meta["CROTA"] = extract_crota_from_wcs(cube.wcs).to(u.deg).value

    flags = []
    zero_fraction = cube.meta["DATAZER"].value / image.size
    saturated_fraction = cube.meta["DATASAT"].value / image.size
    if zero_fraction > settings.zero_fraction_limit:
        flags.append(f"{zero_fraction:.1%} zero pixels")
    if saturated_fraction > settings.saturated_fraction_limit:
        flags.append(f"{saturated_fraction:.1%} saturated pixels")
    meta["OUTLIER"] = int(bool(flags))
    meta["BADPKTS"] = int(bool(missing))
    if missing:
        flags.append(f"{missing} packets missing")
    return cube, flags


@lru_cache(maxsize=32)
def _cached_template(product_code: str):
    from punchbowl.data import NormalizedMetadata

    return NormalizedMetadata.load_template(product_code, "0")


def _level0_template(product_code: str):
    """Return a fresh Level 0 metadata template (loading one from punchbowl's tables costs ~50 ms)."""
    return copy.deepcopy(_cached_template(product_code))


def _interpolate_attitude(before_packet: Packet, before: dict, after_packet: Packet, after: dict, when: datetime):
    """Spherical interpolation of the body-to-ECI quaternion, as punchbowl's control segment does."""
    import quaternion

    def to_quaternion(values: dict):
        return np.quaternion(*(values[f"ATT_DET_Q_BODY_WRT_ECI{i}"] * 0.5e-10 for i in (4, 1, 2, 3)))

    q_before, q_after = to_quaternion(before), to_quaternion(after)
    if before_packet.id == after_packet.id:
        return q_before
    return quaternion.slerp(
        q_before, q_after, before_packet.timestamp.timestamp(), after_packet.timestamp.timestamp(), when.timestamp()
    )


def parse_fits_time(value: str) -> datetime:
    """Parse a FITS time keyword value (``YYYY-mm-ddTHH:MM:SS.fff``) as a naive datetime."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f")
