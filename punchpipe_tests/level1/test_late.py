"""Stray-light models, late and quick Level 1 through Dagster: model selection, lineage, incremental remaking."""

import itertools
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from punchpipe_assets.calibration.bootstrap import synthesize_stray_light_models
from punchpipe_assets.calibration.select import CalibrationCandidate, select_latest_two
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.level1.assets import level1_early_key, level1_late_key, level1_quick_key, level1_stray_light_key
from punchpipe_assets.level1.late import late_code
from punchpipe_assets.level1.stray_light import model_reference_time, model_window, register_stray_light_file
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile
from punchpipe_tests.level1.test_early import CAMERA, SIZE, deliver, level0_of

START = datetime(2025, 8, 1, 11, 54)  # 12 minutes across 12:00, the model time of 2025-08-01
PARTITIONS = ("2025-08-01-11:00", "2025-08-01-12:00")
DAY = datetime(2025, 8, 1)


def stray_light_ramp(size: int = 2048):
    """Return the stray-light pattern fixed in the detector by ``synthesize_early_frames``: rows 2e-13 to 4e-13."""
    import numpy as np

    return (2e-13 * (1 + np.arange(size, dtype=np.float32) / size))[:, None] * np.ones(size, np.float32)


def synthesize_early_frames(
    archive_root: Path,
    camera,
    start: datetime,
    count: int,
    cadence: timedelta,
    size: int = 2048,
    seed: int = 0,
    codes: Sequence[str] = ("XR",),
) -> list[Path]:
    """Early frames of a rolling WFI, for the science tier (the early flow takes ~15 s a frame).

    Each frame is a sky-fixed F-corona (falling as elongation^-2.5, flattened towards the ecliptic,
    so it turns in the detector as the spacecraft rolls 7 degrees a frame about the Sun direction),
    a stray-light pattern fixed in the detector (``stray_light_ramp``) and noise, with the roll in
    the WCS and CROTA. At each time one frame of each of ``codes``, 10 s apart (``XM XZ XP``: a
    matched triplet; the corona is unpolarized, so each polarizer state sees the same scene).
    Returns the files written into the archive.
    """
    import numpy as np
    from astropy.nddata import StdDevUncertainty
    from punchbowl.data import NormalizedMetadata
    from punchbowl.data.punchcube import PUNCHCube
    from scipy.ndimage import zoom

    from punchpipe_assets.calibration.synthesize import _camera_wcs
    from punchpipe_assets.resources import ArchiveResource

    archive, rng = ArchiveResource(root=str(archive_root)), np.random.default_rng(seed)
    stray = stray_light_ramp(size)
    coarse = np.linspace(0, size - 1, 129)
    written = []
    for index, (offset, code) in itertools.product(range(count), enumerate(codes)):
        when, roll = start + index * cadence + timedelta(seconds=10 * offset), np.radians((7.0 * index) % 360 - 180)
        wcs = _camera_wcs(camera, size)
        elongation = wcs.wcs.crval[0]
        wcs.wcs.crval = elongation * np.cos(roll), elongation * np.sin(roll)
        wcs.wcs.pc = [[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]]
        lon, lat = np.radians(wcs.pixel_to_world_values(*np.meshgrid(coarse, coarse)))
        radius = np.degrees(np.arccos(np.cos(lat) * np.cos(lon)))
        angle = np.arctan2(np.sin(lat), np.cos(lat) * np.sin(lon))
        corona = 1e-11 * (radius / 10) ** -2.5 * (1 - 0.4 * np.sin(angle) ** 2)
        data = zoom(corona, size / corona.shape[0], order=1)[:size, :size].astype(np.float32) + stray
        data += rng.normal(0, 2e-14, data.shape).astype(np.float32)
        meta = NormalizedMetadata.load_template(f"{code}{camera.obs}", "1")
        meta["DATE-OBS"] = when.strftime("%Y-%m-%dT%H:%M:%S.000")
        for keyword in ("DATE-BEG", "DATE-END", "DATE-AVG"):
            meta[keyword] = meta["DATE-OBS"].value
        meta["FILEVRSN"], meta["OUTLIER"], meta["CROTA"] = "1", 0, float(np.degrees(roll))
        cube = PUNCHCube(data=data, wcs=wcs, meta=meta, uncertainty=StdDevUncertainty(np.full_like(data, 2e-14)))
        path = archive.product_path("1", code, camera.obs, when, "1")
        archive.write_cube(cube, path, skip_stats=False)
        written.append(path)
    return written


def catalogue_early_frames(catalog, archive: ArchiveResource, paths: Sequence[Path]) -> list[ProductFile]:
    """Catalogue early frames written by ``synthesize_early_frames``, as early Level 1 would (no lineage)."""
    from punchpipe_assets.products import catalog_product
    from punchpipe_assets.resources.archive import sha256_of

    frames = []
    with catalog.session() as session:
        for path in paths:
            _, _, code_obs, stamp, _ = path.name.split("_")
            when, digest = datetime.strptime(stamp, "%Y%m%d%H%M%S"), sha256_of(path)
            frames.append(
                catalog_product(
                    session,
                    None,
                    code=code_obs[:2],
                    obs=code_obs[2:],
                    date_obs=when,
                    file_version="1",
                    path=archive.relative(path),
                    sha256=digest,
                    fingerprint=digest,
                    parents=[],
                    acquisition_time=when,
                )
            )
    return frames


def materialize(config, instance, key: dg.AssetKey, partitions=PARTITIONS) -> None:
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    for partition in partitions:
        assert job.execute_in_process(instance=instance, partition_key=partition, asset_selection=[key]).success


def add_models(config, catalog, offsets: list[int], level: float = 1e-13) -> None:
    """Synthesized S models at 12:00 of 2025-08-01 plus each offset in days, catalogued as the asset would."""
    for offset in offsets:
        when = model_reference_time(DAY + timedelta(days=offset))
        paths = synthesize_stray_light_models(Path(config.archive_dir), CAMERA, when, size=SIZE, level=level)
        with catalog.session() as session:
            for path in paths:
                register_stray_light_file(session, ArchiveResource(root=str(config.archive_dir)), path)


def products(catalog, codes) -> dict[str, ProductFile]:
    with catalog.session() as session:
        rows = session.scalars(select(ProductFile).where(ProductFile.level == "1", ProductFile.file_type.in_(codes)))
        return {Path(p.path).name: p for p in rows}


def parents_of(catalog, product: ProductFile) -> set[str]:
    with catalog.session() as session:
        return {
            Path(p.path).name
            for p in session.scalars(
                select(ProductFile)
                .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
                .where(FileRelationship.child_id == product.id)
            )
        }


def metadata(instance, key: dg.AssetKey, partition: str) -> dict:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return {name: value.value for name, value in record.asset_materialization.metadata.items()}


def mtimes(found: dict[str, ProductFile], archive_dir: Path) -> dict[str, int]:
    return {name: (archive_dir / p.path).stat().st_mtime_ns for name, p in found.items()}


def test_late_and_quick_level1_select_models_record_lineage_and_remake_only_what_changed(
    config, catalog, instance, tmp_path
):
    config.calibration_image_size = SIZE
    level0_of(config, instance, START, 0.2, tmp_path / "sim", seed=5)
    deliver(config, catalog, "1")
    materialize(config, instance, level1_early_key(CAMERA))
    early = products(catalog, ["XM", "XZ", "XP", "XR"])
    noon = datetime(2025, 8, 1, 12)
    morning = {name for name, p in early.items() if p.date_obs < noon}
    afternoon = set(early) - morning
    assert morning and afternoon and Counter(p.file_type for p in early.values())["XR"] >= 2

    # Only the models of 08-01 and 08-02: frames before 12:00 have no model before them.
    add_models(config, catalog, [0, 1])
    materialize(config, instance, level1_late_key(CAMERA))
    late_codes = ["PM", "PZ", "PP", "CR"]
    made = products(catalog, late_codes)
    assert len(made) == len(afternoon)
    first = metadata(instance, level1_late_key(CAMERA), PARTITIONS[0])
    assert first["frames_made"] == 0 and first["frames_failed"] == 0
    assert {f["level0"] for f in first["not_made"]} == {n for n in morning if early[n].acquisition_time.hour == 11}
    assert all(f["status"] == "no_calibration" and "at or before" in f["reason"] for f in first["not_made"])

    # With the model of 07-31, the morning frames are made; the afternoon ones are unchanged.
    add_models(config, catalog, [-1])
    materialize(config, instance, level1_late_key(CAMERA))
    made = products(catalog, late_codes)
    assert len(made) == len(early)
    for name, x in early.items():
        product = made[Path(x.path).name.replace(f"_{x.file_type}", f"_{late_code(x.file_type)}")]
        models = ("20250731", "20250801") if name in morning else ("20250801", "20250802")
        code = "S" + x.file_type[1] + CAMERA.obs
        expected = {name} | {f"PUNCH_L1_{code}_{day}120000_v1.fits" for day in models}
        assert parents_of(catalog, product) == expected  # no mask: masks exist only at 2048 px
    second = metadata(instance, level1_late_key(CAMERA), PARTITIONS[1])
    assert second["frames_made"] == 0 and second["frames_unchanged"] > 0
    assert {name for name, *_ in second["input_calibration_files"]} >= {
        f"PUNCH_L1_SR{CAMERA.obs}_20250801120000_v1.fits",
        f"PUNCH_L1_SR{CAMERA.obs}_20250802120000_v1.fits",
    }
    assert set(second["input_level1_early_files"]) == {n for n in early if early[n].acquisition_time.hour == 12}
    assert all(o["sha256"] and o["status"] == "unchanged" for o in second["outputs"])

    # Nothing changed: nothing remade.
    before = mtimes(made, config.archive_dir)
    materialize(config, instance, level1_late_key(CAMERA))
    assert mtimes(products(catalog, late_codes), config.archive_dir) == before

    # The 08-02 models are remade (new content): exactly the frames they bracket are remade.
    add_models(config, catalog, [1], level=2e-13)
    materialize(config, instance, level1_late_key(CAMERA))
    after = mtimes(products(catalog, late_codes), config.archive_dir)
    remade = {name for name in after if after[name] != before[name]}
    assert remade == {made_name for made_name, p in made.items() if p.date_obs >= noon}
    assert len(remade) == len(afternoon)

    # Quick: clear frames only, the two newest models of the days before (07-30, 07-31), not 08-01/08-02.
    add_models(config, catalog, [-2])
    materialize(config, instance, level1_quick_key(CAMERA), PARTITIONS[1:])
    quick = products(catalog, ["QR"])
    clear = {n for n, p in early.items() if p.file_type == "XR" and p.acquisition_time.hour == 12}
    assert len(quick) == len(clear) > 0
    for product in quick.values():
        assert {n for n in parents_of(catalog, product) if "_SR" in n} == {
            f"PUNCH_L1_SR{CAMERA.obs}_20250730120000_v1.fits",
            f"PUNCH_L1_SR{CAMERA.obs}_20250731120000_v1.fits",
        }
    assert metadata(instance, level1_quick_key(CAMERA), PARTITIONS[1])["frames_made"] == len(clear)


def _candidate(day: int, version: str = "1", hour: int = 12) -> CalibrationCandidate:
    when = datetime(2025, 8, day, hour)
    return CalibrationCandidate(Path(f"PUNCH_L1_SR1_{when:%Y%m%d%H%M%S}_v{version}.fits"), "SR", "1", when, version)


def test_quick_selection_takes_the_two_newest_models_not_after_the_observation():
    models = [_candidate(day) for day in (1, 2, 3, 4, 5)]
    observation = datetime(2025, 8, 4, 15)
    assert select_latest_two(models, observation) == [_candidate(3), _candidate(4)]
    assert select_latest_two(models, datetime(2025, 8, 4, 12)) == [_candidate(3), _candidate(4)]
    assert select_latest_two(models, datetime(2025, 8, 2, 11)) == []  # one model only: none
    newer = [_candidate(2, "2"), _candidate(3, "2")]
    assert select_latest_two(models + newer, observation) == newer  # newest version first
    assert select_latest_two(models + newer[:1], observation) == [_candidate(3), _candidate(4)]


def test_model_grid_and_window():
    reference = model_reference_time(datetime(2025, 8, 1, 3))
    assert reference == datetime(2025, 8, 1, 12)
    assert model_window(reference, 1) == (datetime(2025, 8, 1), datetime(2025, 8, 2))
    assert model_window(reference, 3) == (datetime(2025, 7, 31), datetime(2025, 8, 3))


class PeakMemory:
    """Peak resident memory of this process and its children (punchbowl's workers), sampled twice a second."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = self.process.memory_info().rss
            for child in self.process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.5)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.science
@pytest.mark.timeout(2400)  # 51+ flight-size frames into estimate_stray_light: past 1,200 s on a loaded machine
@pytest.mark.parametrize("backend", ["sqlite"])
def test_full_size_stray_light_model_from_early_frames_and_late_level1(config, catalog, instance, tmp_path):
    """The real estimate_stray_light at 2048 on the fewest frames it accepts (51 over more than 6 hours).

    Cheaper punchbowl parameters through configuration: one CROTA bin spanning every roll and a
    neighbourhood every 40 pixels (the model is interpolated between them). Then the real
    level1_late_core_flow with that model, a second one and the mask.
    """
    from punchpipe_assets.calibration.synthesize import synthesize_calibration
    from punchpipe_assets.config import StrayLightSettings
    from punchpipe_assets.level1.late import Level1LateProcessor
    from punchpipe_assets.resources import ArchiveResource
    from punchpipe_assets.sensors.calibration import scan_calibration_landing

    config.stray_light = StrayLightSettings(n_crota_bins=1, crota_bin_width=360, stride=40, num_workers=2)
    archive = ArchiveResource(root=str(config.archive_dir))
    for path in synthesize_calibration(
        tmp_path / "cal", DAY - timedelta(days=2), size=2048, cameras=[CAMERA], kinds=["mask"]
    ):
        path.rename(Path(config.calibration_landing_dir) / path.name)
    scan_calibration_landing(catalog, archive, config)
    paths = synthesize_early_frames(
        Path(config.archive_dir), CAMERA, DAY + timedelta(hours=2), 51, timedelta(minutes=8)
    )
    frames = catalogue_early_frames(catalog, archive, paths)

    key, partition = level1_stray_light_key(CAMERA), "2025-08-01"
    started = time.monotonic()
    with PeakMemory() as memory:
        materialize(config, instance, key, [partition])
    model_seconds, model_peak = time.monotonic() - started, memory.peak
    made = metadata(instance, key, partition)
    model_name = f"PUNCH_L1_SR{CAMERA.obs}_20250801120000_v1.fits"
    assert made["frames_made"] == 1 and made["frames_failed"] == 0 and made["models_refused"] == 3
    assert [Path(o["path"]).name for o in made["outputs"]] == [model_name]
    assert all("0 M/Z/P triplets" in f["reason"] for f in made["not_made"])
    assert len(made["input_level1_early_files"]) == 51
    model = products(catalog, ["SR"])[model_name]
    assert parents_of(catalog, model) == {p.name for p in paths} | {f"PUNCH_L1_MS{CAMERA.obs}_20250730000000_v1.bin"}
    import numpy as np
    from punchbowl.data import load_ndcube_from_fits

    cube = load_ndcube_from_fits(str(config.archive_dir / model.path))
    assert cube.data.shape == (1, 2048, 2048) and np.isfinite(cube.data).all() and cube.data.any()
    assert cube.meta["DATE-OBS"].value.startswith("2025-08-01T12:00:00")
    materialize(config, instance, key, [partition])  # inputs unchanged: not remade
    assert metadata(instance, key, partition)["frames_unchanged"] == 1

    # Late Level 1 of the first frame (02:00) between a stand-in model of 07-31 and the real one of 08-01.
    for path in synthesize_stray_light_models(
        Path(config.archive_dir), CAMERA, DAY - timedelta(hours=12), size=2048, n_crota_bins=1, codes=["SR"]
    ):
        with catalog.session() as session:
            register_stray_light_file(session, ArchiveResource(root=str(config.archive_dir)), path)
    started = time.monotonic()
    with catalog.session() as session, PeakMemory() as memory:
        frame = session.get(ProductFile, frames[0].id)
        outcome = Level1LateProcessor(session, archive).process_frame(frame)
    late_seconds, late_peak = time.monotonic() - started, memory.peak
    assert outcome.status == "made", outcome.reason
    late = products(catalog, ["CR"])[Path(outcome.path).name]
    assert parents_of(catalog, late) == {
        paths[0].name,
        model_name,
        f"PUNCH_L1_SR{CAMERA.obs}_20250731120000_v1.fits",
        f"PUNCH_L1_MS{CAMERA.obs}_20250730000000_v1.bin",
    }
    print(
        f"\nestimate_stray_light via Dagster, 51 frames at 2048: {model_seconds:.0f} s, peak {model_peak / 1e9:.1f} GB"
        f"\nlevel1_late_core_flow, one 2048 frame: {late_seconds:.0f} s, peak {late_peak / 1e9:.1f} GB"
    )
