"""The command line as a user runs it: real ``punchpipe`` processes on the embedded default."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from astropy.io import fits
from sqlalchemy import select

from punchpipe_assets.resources.archive import sha256_of
from punchpipe_assets.resources.catalog import CatalogResource, ProductFile
from punchpipe_tests.test_guard import PUNCHPIPE

DEMO_SIZE = "64"


def embedded(home: Path) -> dict[str, str]:
    """Return the environment of a user with nothing configured but ``$PUNCHPIPE_HOME``."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PUNCHPIPE_CONFIG", "PUNCHPIPE_CATALOG_URL", "DAGSTER_HOME")
    }
    env["PUNCHPIPE_HOME"] = str(home)
    return env


def punchpipe(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    """Run ``punchpipe`` to completion, assert it succeeded and return what it printed."""
    done = subprocess.run(
        [str(PUNCHPIPE), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_simulate_and_calibration_synthesize_write_readable_files(tmp_path):
    env = embedded(tmp_path / "home")
    out = tmp_path / "downlinks"
    printed = punchpipe(
        env, "simulate", "--start", "2026-01-01T00:00:00", "--hours", "0.05", "--size", "32", "--out", str(out)
    )
    files = sorted(out.glob("*.tlm"))
    assert files and f"wrote {len(list(out.iterdir()))} downlink files" in printed
    assert {f.name.split("_")[2] for f in files} == {"1", "2", "3", "4"}, [f.name for f in files]  # four spacecraft

    printed = punchpipe(env, "calibration", "synthesize", "--size", "32", "--date", "2026-01-01T00:00:00")
    landing = tmp_path / "home" / "calibration-landing"
    delivered = sorted(landing.iterdir())
    assert delivered and f"wrote{len(delivered)}calibrationfilesto{landing}" in "".join(printed.split())
    dates = set()
    for path in delivered:
        if path.suffix == ".fits":
            with fits.open(path) as hdul:  # DATE-OBS in the data HDU, or the primary for distortion and stray light
                (date_obs,) = {h.header["DATE-OBS"] for h in hdul if "DATE-OBS" in h.header}
            stamp = path.name.split("_")[3]  # the name's date is the file's DATE-OBS
            assert date_obs.replace("-", "").replace(":", "").replace("T", "").startswith(stamp), (path.name, date_obs)
            dates.add(stamp[:8])
    # The delivery's date, and the models that bracket it for the model-subtracted levels.
    assert "20260101" in dates and min(dates) < "20260101" < max(dates), dates


def test_demo_on_the_embedded_default_then_status_lineage_and_affected(tmp_path):
    home = tmp_path / "home"
    env = embedded(home)
    printed = punchpipe(env, "demo", "--hours", "0.2", "--size", DEMO_SIZE, timeout=2400)
    assert "0 failed" in printed and "Needs more data:" in printed, printed
    flat = " ".join(printed.split())  # the console wraps long lines
    assert "NFI PCA background (CNN, AR4, SR4)" in flat and "at least 180 clear NFI frames" in flat, printed
    # The summary: one line per waiting asset, however many of its partitions wait.
    summary = flat.split("Needs more data:")[1]
    assert summary.count("level3_fcorona_clear_wfi1") == 1, summary
    assert re.search(r"level3_fcorona_clear_wfi1: \d+ partitions wait", summary), summary
    assert (home / "catalog.sqlite").exists() and (home / "dagster" / "dagster.yaml").exists()

    status = json.loads(punchpipe(env, "status", "--json"))
    plain = punchpipe(env, "status")
    catalog = CatalogResource(url=f"sqlite:///{home / 'catalog.sqlite'}")
    with catalog.session() as session:
        products = session.scalars(select(ProductFile).where(ProductFile.state == "created")).all()
        by_level = {}
        for product in products:
            by_level.setdefault(product.level, []).append(product)
            assert sha256_of(home / "archive" / product.path) == product.sha256, product.path
        quick_ctm = next(p for p in products if p.level == "Q" and p.file_type == "CT")
        calibration = session.scalars(
            select(ProductFile).where(ProductFile.state != "created", ProductFile.file_type == "GR")
        ).first()
    for level in ("0", "1", "2", "Q"):
        assert by_level.get(level), f"the demo made no Level {level}"
    assert sum(status["levels"]["2"].values()) == len(by_level["2"]), status["levels"]
    assert all(row["state"] == "ingested" for row in status["telemetry"]), status["telemetry"]
    assert "Products" in plain and "Telemetry files" in plain and "Calibration deliveries" in plain, plain

    tree = json.loads(punchpipe(env, "lineage", Path(quick_ctm.path).name, "--json"))

    def leaves(node: dict) -> set[str]:
        found = {t["file"] for t in node["telemetry"]}
        for parent in node["parents"]:
            found |= leaves(parent)
        return found

    telemetry = leaves(tree)
    assert telemetry and all(name.endswith(".tlm") for name in telemetry), telemetry
    text = punchpipe(env, "lineage", Path(quick_ctm.path).name)
    assert Path(quick_ctm.path).name in text and next(iter(telemetry)) in text

    assert calibration is not None
    listed = punchpipe(env, "affected", Path(calibration.path).name)
    assert "L1" in listed and " products, " in listed, listed

    # Scientists find the products: every CTM of Level Q, with the catalogued checksum of the file on disk.
    found = json.loads(punchpipe(env, "products", "--level", "Q", "--code", "CTM", "--json"))
    assert found and {row["code"] for row in found} == {"CTM"}, found
    assert len(found) == status["levels"]["Q"]["CTM"], (found, status["levels"]["Q"])
    for row in found:
        assert sha256_of(Path(row["path"])) == row["sha256"] and row["partition"], row
    first = found[0]["date_obs"]
    later = json.loads(punchpipe(env, "products", "--level", "q", "--code", "CT", "--start", first, "--json"))
    before = json.loads(punchpipe(env, "products", "--level", "Q", "--code", "CT", "--end", first, "--json"))
    assert len(later) == len(found) and before == [], (later, before)
    table = punchpipe(env, "products", "--level", "2")
    assert f"{sum(status['levels']['2'].values())} products" in table, table

    # Reset: named, asked, refused for production, then done; telemetry in the landing folder is kept.
    landed = sorted(p.name for p in (home / "landing").iterdir())
    asked = subprocess.run(
        [str(PUNCHPIPE), "reset", "--archive"], env=env, input="n\n", capture_output=True, text=True, check=False
    )
    said = asked.stdout + asked.stderr
    assert asked.returncode == 1 and "nothing deleted" in said and "catalog" in said and "archive" in said, said
    assert json.loads(punchpipe(env, "products", "--json")), "a declined reset deleted products"
    production = {**env, "PUNCHPIPE_CATALOG_URL": "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"}
    refused = subprocess.run(
        [str(PUNCHPIPE), "reset", "--yes"], env=production, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 77 and "--production" in refused.stdout + refused.stderr, refused
    archived = [p for p in (home / "archive").rglob("*") if p.is_file()]
    punchpipe(env, "reset", "--yes")
    assert json.loads(punchpipe(env, "products", "--json")) == []
    after = json.loads(punchpipe(env, "status", "--json"))["telemetry"]  # the landing files: to be read again
    assert sorted(row["file"] for row in after) == landed and all(row["state"] == "waiting" for row in after), after
    assert all(p.exists() for p in archived), "a reset without --archive deleted archive files"
    punchpipe(env, "reset", "--archive", "--yes")
    assert not [p for p in (home / "archive").rglob("*") if p.is_file()]
    assert sorted(p.name for p in (home / "landing").iterdir()) == landed
