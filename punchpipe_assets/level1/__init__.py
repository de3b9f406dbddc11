"""Level 1: early calibration, stray-light models, late and quick products."""
