"""Calibration files: kinds, the selection rule, validation, synthetic sets and bootstrap models, assets."""

from punchpipe_assets.calibration.kinds import (
    CALIBRATION_KINDS,
    STRAY_LIGHT_KIND,
    CalibrationError,
    CalibrationKind,
    calibration_codes_for,
    kind_for_code,
    parse_calibration_name,
    version_key,
)
from punchpipe_assets.calibration.select import (
    CalibrationCandidate,
    early_flow_arguments,
    select_calibration,
)

__all__ = [
    "CALIBRATION_KINDS",
    "STRAY_LIGHT_KIND",
    "CalibrationCandidate",
    "CalibrationError",
    "CalibrationKind",
    "calibration_codes_for",
    "early_flow_arguments",
    "kind_for_code",
    "parse_calibration_name",
    "select_calibration",
    "version_key",
]
