"""Level 0 from downlinks with any name: non-ASCII, long, beside landing entries that are not downlinks."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import yaml
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import select

from punchpipe_assets.cli import main, run_process
from punchpipe_assets.lineage import find_product, lineage_tree
from punchpipe_assets.names import PROVENANCE_LENGTH, safe_name
from punchpipe_assets.resources.archive import sha256_of
from punchpipe_assets.resources.catalog import Packet, ProductFile
from punchpipe_assets.simulate import simulate
from punchpipe_tests.conftest import SIMULATION_START

SIZE = 128
NAMES = {
    "1": "PUNCH_TLM_1_München Süd 🚀 20250801.tlm",
    "2": "PUNCH_TLM_2_20250801120000_ground-station-svalbard_pass-0042_replayed.tlm",
    "3": "PUNCH_TLM_3_20250801120000.tlm",
    "4": "PUNCH_TLM_4_20250801120000.tlm",
}


def test_level0_from_any_name_with_safe_provenance_and_full_names_in_the_catalog(config, catalog, instance, tmp_path):
    """Make Level 0 of every camera: safe provenance in FITS, full names in the catalog, bad entries aside."""
    report = simulate(SIMULATION_START, 0.25, tmp_path / "sim", size=SIZE, seed=4)
    landing = Path(config.landing_dir)
    for path in report.files:
        shutil.copy(path, landing / NAMES[path.name.split("_")[2]])
    undecodable = os.path.join(os.fsencode(landing), b"PUNCH_TLM_3_\xfe\xff.tlm")
    shutil.copy(report.files[0], undecodable)
    (landing / "PUNCH_TLM_folder.tlm").mkdir()
    (landing / "PUNCH_TLM_dangling.tlm").symlink_to(landing / "nowhere.tlm")
    (landing / "PUNCH_TLM_eio.tlm").symlink_to("/proc/self/mem")

    summary = run_process(config, instance, show_progress=False)

    assert summary["failed_runs"] == 0
    expected = Counter(f"{code}{obs}" for obs, _, code in report.images)
    config_file = tmp_path / "punchpipe.yaml"
    config_file.write_text(yaml.safe_dump({"home": str(config.home), "catalog_url": config.catalog_url}))
    status = json.loads(CliRunner().invoke(main, ["--config", str(config_file), "status", "--json"]).output)
    assert status["levels"]["0"] == dict(expected)
    states = {row["file"]: row["state"] for row in status["telemetry"]}
    assert states == {
        **{name: "ingested" for name in NAMES.values()},
        "PUNCH_TLM_3_\\xfe\\xff.tlm": "quarantined",
        "PUNCH_TLM_folder.tlm": "quarantined",
        "PUNCH_TLM_dangling.tlm": "unreadable",
        "PUNCH_TLM_eio.tlm": "unreadable",
    }
    printed = CliRunner().invoke(main, ["--config", str(config_file), "status"])
    assert printed.exit_code == 0 and "PUNCH_TLM_eio.tlm" in printed.output and "Input/output" in printed.output

    with catalog.session() as session:
        products = session.scalars(select(ProductFile)).all()
        assert len(products) == len(report.images)  # every image made, each with its catalogued checksum
        assert all(sha256_of(config.archive_dir / product.path) == product.sha256 for product in products)
        image_states = session.scalars(select(Packet.state).where(Packet.kind == "image")).all()
        assert set(image_states) == {"used"}  # every good image packet went into Level 0
        for obs in ("1", "2"):
            product = session.scalars(select(ProductFile).where(ProductFile.observatory == obs)).first()
            with fits.open(config.archive_dir / product.path) as hdul:
                provenance = [str(value) for value in hdul[-1].data["provenance"]]
            assert provenance == [safe_name(NAMES[obs])]
            assert provenance[0].isascii() and len(provenance[0]) <= PROVENANCE_LENGTH and "~" in provenance[0]
            tree = lineage_tree(session, find_product(session, Path(product.path).name))
            assert [entry["file"] for entry in tree["telemetry"]] == [NAMES[obs]]

    again = run_process(config, instance, show_progress=False)  # the next run goes on, nothing new to do
    assert again["failed_runs"] == 0 and again["files"] == 0
