"""Bootstrap Level 3 F-corona models: written in the trefoil frame, validated as delivered, wrong frames refused."""

from __future__ import annotations

from datetime import datetime

import pytest

from punchpipe_assets.calibration.bootstrap import synthesize_fcorona_models
from punchpipe_assets.calibration.kinds import CalibrationError, delivered_kind
from punchpipe_assets.calibration.validate import validate_calibration_file
from punchpipe_tests.chain import WFI


def test_bootstrap_models_are_valid_deliveries_in_the_mosaic_frame_only(tmp_path):
    when = datetime(2025, 7, 31, 12)
    paths = synthesize_fcorona_models(tmp_path, WFI[:1], [when], downsample=8)
    assert sorted(p.name for p in paths) == [f"PUNCH_L3_{code}1_20250731120000_v1.fits" for code in ("CF", "PF")]
    for path in paths:
        code = path.name.split("_")[2][:2]
        assert delivered_kind(path).name == "fcorona"
        validate_calibration_file(path, "1", code, level="3", mosaic_shape=(512, 512))
        with pytest.raises(CalibrationError, match="in the mosaic frame"):
            validate_calibration_file(path, "1", code, level="3", mosaic_shape=(4096, 4096))
    with pytest.raises(CalibrationError, match="only for observatories 1, 2, 3"):
        validate_calibration_file(tmp_path / "PUNCH_L3_CF4_20250731120000_v1.fits", "4", "CF", level="3")
