"""Benchmark of early Level 1 through Dagster versus a plain loop of the same punchbowl calls.

Usage::

    .venv/bin/python benchmarks/bench_level1.py [--hours 1.0] [--camera wfi1]

One camera-hour (or ``--hours`` of it, at most 1) of full-size (2048x2048) frames, made at early
Level 1 twice, each side in its own fresh subprocess, run one after the other:

  dagster: a real Dagster instance in a temporary folder (``dagster.instance_for_test``) and the
           pipeline's definitions (``build_definitions``); ``level1_early_{camera}`` materialized for
           the hour's partition in one run with the in-process executor, as the definitions run it
           (calibration selection, despike neighbours and lineage from the catalog, one
           ``level1_early_core_flow`` per frame, the archive's writer).
  plain:   a loop over the same frames: gains from the Level 0 header, ``level1_early_core_flow``
           with the same calibration files and despike neighbours (alignment off, 2 workers), the
           cube written with the same writer (``ArchiveResource.write_cube``); no Dagster, no catalog.

Preparation, shared and not part of the ratio, also in a fresh subprocess: simulated telemetry
for the camera, Level 0 through Dagster (``run_process``), a synthesized calibration set delivered
through the calibration sensor's logic, and the plan of the plain side (each frame's calibration
files and neighbours, chosen by the pipeline's rule on the prepared catalog). Both sides start
from copies of the prepared catalog and write into their own archive; at the end the stored data
and uncertainty of each pair of products are compared byte for byte (the archive's writer is
deterministic), to show that both sides did the same work.

Printed: frames, seconds, frames per minute of each side (the run alone, punchbowl already
imported; and the whole fresh process), the ratio Dagster / plain of the run's seconds (target
1.05 or less; also of CPU seconds, less sensitive to other load on the machine), and the peak RSS
(``ru_maxrss`` from ``os.wait4``) of each subprocess and of the preparation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", "/tmp/punchpipe-prefect-home")
warnings.filterwarnings("ignore")

START = datetime(2025, 8, 1, 12, 0, 0)  # the partition's hour
PARTITION = f"{START:%Y-%m-%d-%H:%M}"
CALIBRATION_DATE = START - timedelta(days=2)
SIZE = 2048
MAX_WORKERS = 2  # Level1EarlyProcessor's default, which the asset uses


def _config(home: Path):
    from punchpipe_assets.config import immediate_config

    return immediate_config(home)


def _camera(slug: str):
    from punchpipe_assets.cameras import CAMERAS

    return next(camera for camera in CAMERAS if camera.slug == slug)


def _quiet_logs() -> None:
    import logging

    logging.getLogger("ccsdspy").setLevel(logging.WARNING)
    logging.disable(logging.INFO)


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _import_punchbowl() -> float:
    """Import what the early flow and the writer need (untimed in the run, reported)."""
    start = time.perf_counter()
    import punchbowl.data  # noqa: F401
    import punchbowl.level1.flow  # noqa: F401

    return time.perf_counter() - start


# --------------------------------------------------------------------------------------- children


def child_prepare(home: Path, camera_slug: str, hours: float) -> dict:
    """Telemetry, Level 0, calibration delivery, and the plan of the plain side."""
    import dagster as dg
    from sqlalchemy import func, select

    from punchpipe_assets.calibration.select import early_flow_arguments, select_frame_calibration
    from punchpipe_assets.calibration.synthesize import synthesize_calibration
    from punchpipe_assets.cli import run_process
    from punchpipe_assets.level1.early import Level1EarlyProcessor
    from punchpipe_assets.resources import ArchiveResource, CatalogResource
    from punchpipe_assets.resources.catalog import ProductFile
    from punchpipe_assets.sensors.calibration import scan_calibration_landing
    from punchpipe_assets.simulate import simulate

    camera = _camera(camera_slug)
    config = _config(home)
    catalog = CatalogResource(url=config.catalog_url)
    times = {}
    start = time.perf_counter()
    simulate(START, hours, config.landing_dir, size=SIZE, seed=0, cameras=[camera])
    times["simulate_s"] = time.perf_counter() - start

    start = time.perf_counter()
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        summary = run_process(config, instance, show_progress=False)
    if summary["failed_runs"]:
        raise SystemExit(f"Level 0 failed: {summary}")
    times["level0_s"] = time.perf_counter() - start

    start = time.perf_counter()
    config.calibration_image_size = SIZE
    for path in synthesize_calibration(home / "calibration-staging", CALIBRATION_DATE, size=SIZE, cameras=[camera]):
        path.rename(Path(config.calibration_landing_dir) / path.name)
    deliveries = scan_calibration_landing(catalog, ArchiveResource(root=str(config.archive_dir)), config)
    if {d.state for d in deliveries} != {"active"}:
        raise SystemExit(f"calibration delivery failed: {[(d.name, d.state, d.reason) for d in deliveries]}")
    times["calibration_s"] = time.perf_counter() - start

    frames = []
    with catalog.session() as session:
        level0_images = session.scalar(select(func.count(ProductFile.id)).where(ProductFile.level == "0"))
        processor = Level1EarlyProcessor(session, ArchiveResource(root=str(config.archive_dir)))
        for level0 in processor.frames(camera, START, START + timedelta(hours=1)):
            selection, _ = select_frame_calibration(session, level0)
            frames.append(
                {
                    "level0": level0.path,
                    "code": "X" + level0.file_type[1],
                    "obs": level0.observatory,
                    "date_obs": level0.date_obs.isoformat(),
                    "neighbours": [p.path for p in processor.despike_neighbours(level0)],
                    "calibration": early_flow_arguments(selection),
                }
            )
    (home / "plan.json").write_text(json.dumps(frames, indent=1))
    return {"frames": len(frames), "level0_images": level0_images, **times}


def child_dagster(home: Path, prepared: Path, camera_slug: str) -> dict:
    """``level1_early_{camera}`` for the partition, one run, in-process executor, fresh instance."""
    import dagster as dg
    from sqlalchemy import select

    from punchpipe_assets.definitions import build_definitions
    from punchpipe_assets.level1.assets import level1_early_key
    from punchpipe_assets.resources import CatalogResource
    from punchpipe_assets.resources.catalog import ProductFile

    shutil.copy(prepared / "catalog.sqlite", home / "catalog.sqlite")
    config = _config(home)
    result: dict = {"punchbowl_import_s": _import_punchbowl()}
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        load_before, started_at = os.getloadavg()[0], time.time()
        cpu_start, start = time.process_time(), time.perf_counter()
        job = build_definitions(config).resolve_implicit_global_asset_job_def()
        run = job.execute_in_process(
            instance=instance, partition_key=PARTITION, asset_selection=[level1_early_key(_camera(camera_slug))]
        )
        result |= {
            "run_s": time.perf_counter() - start,
            "run_cpu_s": time.process_time() - cpu_start,
            "started_at": started_at,
            "load_before": load_before,
        }
        if not run.success:
            raise SystemExit("the Dagster run failed")
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=level1_early_key(_camera(camera_slug)), asset_partitions=[PARTITION]),
            limit=2,
        ).records
        metadata = record.asset_materialization.metadata
        result["statuses"] = {k: metadata[f"frames_{k}"].value for k in ("made", "unchanged", "failed")}
    with CatalogResource(url=config.catalog_url).session() as session:
        result["outputs"] = sorted(
            session.scalars(select(ProductFile.path).where(ProductFile.level == "1", ProductFile.file_type.like("X%")))
        )
    result["frames"] = len(result["outputs"])
    return result


def child_plain(home: Path, prepared: Path) -> dict:
    """Run the same punchbowl calls in a loop, written with the same writer."""
    from punchpipe_assets.offline import configure_astropy_offline
    from punchpipe_assets.resources import ArchiveResource

    configure_astropy_offline()  # the pipeline does it on import of its Level 0 code
    result: dict = {"punchbowl_import_s": _import_punchbowl()}
    from astropy.io import fits
    from punchbowl.level1.flow import level1_early_core_flow

    plan = json.loads((prepared / "plan.json").read_text())
    archive = ArchiveResource(root=str(home / "archive"))
    outputs = []
    load_before, started_at = os.getloadavg()[0], time.time()
    cpu_start, start = time.process_time(), time.perf_counter()
    for frame in plan:
        header = fits.getheader(frame["level0"], 1)
        [cube] = level1_early_core_flow(
            [frame["level0"]],
            gain_bottom=float(header["GAINBTM"]),
            gain_top=float(header["GAINTOP"]),
            despike_neighbors=frame["neighbours"] or None,
            do_align=False,
            max_workers=MAX_WORKERS,
            **frame["calibration"],
        )
        path = archive.product_path("1", frame["code"], frame["obs"], datetime.fromisoformat(frame["date_obs"]), "1")
        archive.write_cube(cube, path, skip_stats=False)
        outputs.append(str(path))
    result |= {
        "run_s": time.perf_counter() - start,
        "run_cpu_s": time.process_time() - cpu_start,
        "started_at": started_at,
        "load_before": load_before,
        "outputs": sorted(outputs),
        "frames": len(outputs),
    }
    return result


def child(side: str, home: Path, prepared: Path, camera: str, hours: float) -> None:
    """One step in a fresh interpreter; prints one JSON line."""
    t_process = time.perf_counter()
    _quiet_logs()
    home.mkdir(parents=True, exist_ok=True)
    if side == "prepare":
        result = child_prepare(home, camera, hours)
    elif side == "dagster":
        result = child_dagster(home, prepared, camera)
    else:
        result = child_plain(home, prepared)
    result |= {
        "side": side,
        "in_process_s": time.perf_counter() - t_process,
        "load_after": os.getloadavg()[0],
        "cpu_s": _cpu_seconds(),
    }
    print("RESULT " + json.dumps(result, default=str), flush=True)


def frame_seconds(result: dict) -> list[float]:
    """Seconds per frame: intervals between the products' write times, the first from the run's start."""
    times = sorted([result["started_at"], *(os.stat(path).st_mtime for path in result["outputs"])])
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def run_child(side: str, home: Path, prepared: Path, args: argparse.Namespace) -> dict:
    """Run one step in a fresh interpreter; its peak RSS is the ``ru_maxrss`` the kernel reports for it.

    ``os.wait4`` gives the rusage of this one child (the maximum over it and the processes it
    waited for), unlike ``RUSAGE_CHILDREN``, which is the maximum over every child so far.
    """
    home.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = home / "child.stdout", home / "child.stderr"
    command = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--home",
        str(home),
        "--prepared",
        str(prepared),
        "--camera",
        args.camera,
        "--hours",
        str(args.hours),
    ]
    start = time.perf_counter()
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=os.environ | {"PYTHONWARNINGS": "ignore"})
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    output = stdout_path.read_text()
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        sys.stderr.write(output[-5000:] + stderr_path.read_text()[-5000:])
        raise SystemExit(f"{side} child failed (exit {process.returncode})")
    result = json.loads(lines[-1][len("RESULT ") :]) | {"process_wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}
    if "outputs" in result:
        result["median_frame_s"] = statistics.median(frame_seconds(result))
    return result


# ------------------------------------------------------------------------------------------ checks


def stored_digest(path: str) -> str:
    """SHA-256 of the stored (compressed) data and uncertainty of a product: no header, no DATE."""
    from astropy.io import fits

    digest = hashlib.sha256()
    with fits.open(path, disable_image_compression=True) as hdul, open(path, "rb") as handle:
        for hdu in hdul[1:3]:
            info = hdu.fileinfo()
            handle.seek(info["datLoc"])
            digest.update(handle.read(info["datSpan"]))
    return digest.hexdigest()


def compare_outputs(dagster: dict, plain: dict) -> tuple[int, list[str]]:
    """Count the products identical on both sides and name the ones that differ or are missing."""
    by_name = {Path(p).name: p for p in plain["outputs"]}
    different = []
    for path in dagster["outputs"]:
        other = by_name.get(Path(path).name)
        if other is None or stored_digest(path) != stored_digest(other):
            different.append(Path(path).name)
    missing = sorted(set(by_name) - {Path(p).name for p in dagster["outputs"]})
    return len(dagster["outputs"]) - len(different), different + missing


# ------------------------------------------------------------------------------------------ report


def print_report(prepare: dict, results: list[dict], args: argparse.Namespace, identical, different) -> None:
    """Print the preparation, the timings of both sides and whether their products are identical."""
    print(
        f"\npreparation (not timed in the ratio): {prepare['level0_images']} Level 0 images, "
        f"{prepare['frames']} science frames in the partition; simulate {prepare['simulate_s']:.1f} s, "
        f"Level 0 through Dagster {prepare['level0_s']:.1f} s, calibration synthesis + delivery "
        f"{prepare['calibration_s']:.1f} s; whole subprocess {prepare['process_wall_s']:.1f} s, peak RSS "
        f"{prepare['peak_rss_mb']:.0f} MB"
    )
    print(
        f"\nearly Level 1, {args.camera}, {args.hours} h of partition {PARTITION} at {SIZE}x{SIZE}, each side in a "
        "fresh subprocess, sides run one after the other;"
    )
    print(
        "    run = the timed work, punchbowl already imported (dagster: build_definitions + execute_in_process of "
        "the asset; plain: the loop); s/frame = median interval between products written (the first from the "
        "run's start); run cpu = CPU seconds of the run (all threads); process = the whole subprocess as the "
        "parent sees it, cpu its CPU seconds; peak RSS = ru_maxrss of the subprocess (os.wait4)"
    )
    print(
        f"    {'side':8s} {'frames':>6s} {'run s':>7s} {'frames/min':>10s} {'s/frame':>7s} {'run cpu s':>9s} "
        f"{'process s':>9s} {'frames/min':>10s} {'cpu s':>7s} {'peak RSS':>9s} {'load avg':>9s}"
    )
    for r in results:
        print(
            f"    {r['side']:8s} {r['frames']:6d} {r['run_s']:7.1f} {60 * r['frames'] / r['run_s']:10.2f} "
            f"{r['median_frame_s']:7.1f} {r['run_cpu_s']:9.1f} {r['process_wall_s']:9.1f} "
            f"{60 * r['frames'] / r['process_wall_s']:10.2f} {r['cpu_s']:7.1f} "
            f"{r['peak_rss_mb']:6.0f} MB {r['load_before']:4.1f}>{r['load_after']:<4.1f}"
        )
    by_side = {side: [r for r in results if r["side"] == side] for side in ("dagster", "plain")}
    for r in by_side["dagster"]:
        print(f"    dagster frames {r['statuses']}; punchbowl import (untimed) {r['punchbowl_import_s']:.1f} s")

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in by_side[side])

    run_ratio = median("dagster", "run_s") / median("plain", "run_s")
    print(
        f"    ratio dagster / plain, {'seconds of the run:':36s}{run_ratio:.3f}  "
        f"(target <= 1.05: {'met' if run_ratio <= 1.05 else 'NOT met'}){'; medians' if len(results) > 2 else ''}"
    )
    for label, key in (
        ("CPU seconds of the run", "run_cpu_s"),
        ("median seconds per frame", "median_frame_s"),
        ("seconds of the whole fresh process", "process_wall_s"),
    ):
        print(f"    ratio dagster / plain, {label + ':':36s}{median('dagster', key) / median('plain', key):.3f}")
    print(
        f"    products identical on both sides (stored data and uncertainty): {identical}/{prepare['frames']}"
        + (f"; different or missing: {different}" if different else "")
    )


def main() -> None:
    """Run the early Level 1 benchmark (or, with ``--child``, one step of it) and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="hours of the partition's hour simulated (<= 1)")
    parser.add_argument("--camera", default="wfi1", choices=("wfi1", "wfi2", "wfi3", "nfi4"))
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating which goes first")
    parser.add_argument("--workdir", type=Path, default=None, help="kept if given; default: a temporary folder")
    parser.add_argument("--child", choices=("prepare", "dagster", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.hours <= 1:
        parser.error("--hours must be in (0, 1]: one hour partition, one run")
    if args.child:
        child(args.child, args.home, args.prepared, args.camera, args.hours)
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_level1_"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"bench_level1: camera={args.camera} hours={args.hours} size={SIZE} (work folder {work}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]})",
        flush=True,
    )
    try:
        prepared = work / "prepared"
        prepare = run_child("prepare", prepared, prepared, args)
        print(f"prepared {prepare['frames']} frames in {prepare['process_wall_s']:.1f} s", flush=True)
        results = []
        for k in range(args.repeats):  # sides alternate, so a change of load on the machine hits both
            for side in ("plain", "dagster") if k % 2 == 0 else ("dagster", "plain"):
                results.append(run_child(side, work / f"{side}{k}", prepared, args))
                print(f"{side}: {results[-1]['frames']} frames in {results[-1]['run_s']:.1f} s", flush=True)
        first = {r["side"]: r for r in reversed(results)}
        identical, different = compare_outputs(first["dagster"], first["plain"])
        print_report(prepare, results, args, identical, different)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
