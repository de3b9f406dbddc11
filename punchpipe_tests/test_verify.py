"""``punchpipe verify [--repair]`` as a real command: deleted and damaged archive files found and remade."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import numpy as np
from astropy.io import fits
from sqlalchemy import select

from punchpipe_assets.calibration.synthesize import synthesize_calibration
from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.resources.archive import sha256_of
from punchpipe_assets.resources.catalog import CatalogResource, ProductFile
from punchpipe_assets.simulate import simulate
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.test_guard import installation, punchpipe

CAMERA = CAMERA_BY_OBS["2"]


def run(env, *args: str) -> tuple[int, str]:
    """Run ``punchpipe`` to completion; return its exit status and output."""
    process = punchpipe(env, *args)
    output, _ = process.communicate(timeout=900)
    return process.returncode, output


def fits_data(path) -> np.ndarray:
    """Return the image of a FITS product (its first extension)."""
    with fits.open(path) as hdul:
        return np.asarray(hdul[1].data).copy()


def report_of(output: str) -> dict:
    """Return the JSON report ``verify --json`` printed (after any log lines)."""
    return json.JSONDecoder().raw_decode(output[output.index('{\n  "checked"') :])[0]


def test_verify_reports_missing_and_damaged_files_with_lineage_and_repair_remakes_them(tmp_path):
    config, env = installation(tmp_path)
    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=64, seed=5, cameras=[CAMERA])
    for path in report.files:
        shutil.copy(path, config.landing_dir / path.name)
    synthesize_calibration(
        config.calibration_landing_dir,
        SIMULATION_START - timedelta(days=2),
        size=64,
        cameras=[CAMERA],
        kinds=["vignetting"],
    )
    assert run(env, "process", "--quiet")[0] == 0
    status, output = run(env, "verify")
    assert status == 0 and "0 missing or damaged" in output, output

    with CatalogResource(url=config.catalog_url).session() as session:
        level0 = session.scalars(select(ProductFile).where(ProductFile.level == "0").order_by(ProductFile.path)).all()
        delivered = session.scalars(select(ProductFile).where(ProductFile.state != "created")).first()
    deleted, damaged = level0[0], level0[1]
    originals = {p.path: fits_data(config.archive_dir / p.path) for p in (deleted, damaged)}
    (config.archive_dir / deleted.path).unlink()
    (config.archive_dir / damaged.path).write_bytes(b"damaged")
    (config.archive_dir / delivered.path).write_bytes(b"damaged too")

    status, output = run(env, "verify", "--json")
    assert status == 1, output
    found = {p["path"]: p for p in report_of(output)["problems"]}
    assert set(found) == {deleted.path, damaged.path, delivered.path}, found
    assert found[deleted.path]["problem"] == "missing" and found[damaged.path]["problem"] == "damaged"
    assert found[deleted.path]["asset"] == f"level0_{CAMERA.slug}" and found[deleted.path]["partition"]
    assert found[deleted.path]["made_from"] == [] or all(".tlm" not in n for n in found[deleted.path]["made_from"])
    assert found[delivered.path]["origin"] == "delivered" and found[delivered.path]["asset"] is None

    status, output = run(env, "verify", "--repair", "--json")
    assert status == 1, output  # the delivered file remains: it must be delivered again
    result = report_of(output)
    assert sorted(result["repaired"]) == sorted([deleted.path, damaged.path]), result
    assert [p["path"] for p in result["problems"]] == [delivered.path], result
    with CatalogResource(url=config.catalog_url).session() as session:
        for product in (deleted, damaged):
            row = session.get(ProductFile, product.id)
            assert sha256_of(config.archive_dir / row.path) == row.sha256  # archive and catalog agree
            assert np.array_equal(fits_data(config.archive_dir / row.path), originals[row.path])  # the same image
