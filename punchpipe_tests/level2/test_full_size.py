"""Science tier: a Level 2 clear mosaic at flight size (2048-pixel frames, 4096x4096 trefoil) equals punchbowl's."""

from pathlib import Path

import numpy as np
import pytest

from punchpipe_assets.level2.assets import LEVEL2_CTM, LEVEL2_PTM, level2_layers_key
from punchpipe_assets.resources import ArchiveResource
from punchpipe_tests.chain import WFI, materialize, products, run_chain_to_level1
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.level2.test_mosaics import header_and_data, parents

pytestmark = pytest.mark.science


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.timeout(2400)  # two 4096x4096 trefoil mosaics from nine and three 2048x2048 frames
def test_flight_size_ctm_equals_level2_core_flow(config, instance, tmp_path):
    from punchbowl.level2.flow import level2_core_flow

    config.calibration_image_size = 2048
    # The first cadence slot only: one polarized triplet and one clear image per camera.
    run_chain_to_level1(
        config, instance, SIMULATION_START, 0.065, size=2048, stages=("level0", "level1_early", "level1_late")
    )
    partition = f"{SIMULATION_START:%Y-%m-%d-%H:%M}"
    materialize(config, instance, [LEVEL2_PTM, LEVEL2_CTM, *[level2_layers_key(c) for c in WFI]], [partition])
    [ctm] = products(config, "2", ["CT"])
    inputs = sorted((p for p in parents(config, ctm) if p.file_type == "CR"), key=lambda p: p.observatory)
    masks = {p.observatory: p for p in parents(config, ctm) if p.file_type == "MS"}
    [alphas] = [p for p in parents(config, ctm) if p.file_type == "AL"]
    assert len(inputs) == 3 and sorted(masks) == ["1", "2", "3"]  # masks by the selection rule, at 2048
    root = Path(config.archive_dir)
    [cube, *layers] = level2_core_flow(
        [str(root / p.path) for p in inputs],
        [[] for _ in inputs],
        polarized=False,
        image_masks=[str((root / masks[p.observatory].path).with_suffix(".bin")) for p in inputs],
        alphas_file=str(root / alphas.path),
    )
    assert cube.data.shape == (4096, 4096) and len(layers) == 3
    direct = ArchiveResource(root=str(tmp_path / "direct")).product_path("2", "CT", "M", ctm.date_obs, "1")
    ArchiveResource(root=str(tmp_path / "direct")).write_cube(cube, direct, skip_stats=False)
    ours, theirs = header_and_data(root / ctm.path), header_and_data(direct)
    assert ours[0] == theirs[0]
    np.testing.assert_array_equal(ours[1], theirs[1])
    np.testing.assert_array_equal(ours[2], theirs[2])
    assert np.isfinite(ours[1]).mean() > 0.3
