"""Benchmarks of the landing sensor and of Level 0 formation through Dagster versus a plain loop.

Usage::

    .venv/bin/python benchmarks/bench_level0.py [--size 2048] [--hours 0.25] [--files 10000]

(a) Landing-sensor tick: ``scan_landing`` with ``--files`` small telemetry files present in the
    landing folder and registered in the catalog, plus 4 new ones, versus a tick with only the 4
    new files (empty catalog and folder). The registered files are real, distinct downlinks: one
    simulation at 16x16 pixels cut into 1-minute downlink windows (one file per spacecraft and
    minute), so every file has its own packets (attitude, filter wheel, images) in the catalog.
    The 4 new files of each tick are a fresh 1-minute simulation (distinct names and packets).
    Two states of the big catalog are timed: "backlog" (all image packets pending, never
    attempted: what the sensor sees before Level 0 has run) and "steady" (every packet used:
    Level 0 has caught up).

(b) Level 0 images per minute on the same simulated telemetry (``--size``, ``--hours``), each side
    in its own fresh subprocess with its own catalog, archive and landing folder:
      dagster: ``run_process(config, instance)`` on a fresh ``dagster.instance_for_test``;
      plain:   ``scan_landing`` (same registration) then ``Level0Former.form_window`` per camera
               and hour, no Dagster.
    Rates are given excluding the punchbowl import, including it, and for the whole fresh
    process (interpreter start, all imports, run): what an operator sees on a first run.
"""

from __future__ import annotations

import argparse
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

os.environ.setdefault("PREFECT_HOME", "/tmp/prefecthome")
warnings.filterwarnings("ignore")

SIM_START = datetime(2025, 8, 1, 12, 0, 0)  # part (b) telemetry
MANY_START = datetime(2025, 6, 1, 0, 0, 0)  # part (a) registered files (disjoint from everything else)
NEW_START = datetime(2025, 10, 1, 0, 0, 0)  # part (a) new files, one hour apart per tick
SMALL_SIZE = 16


def _config(home: Path):
    from punchpipe_assets.config import immediate_config

    return immediate_config(home)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _quiet_logs() -> None:
    import logging

    logging.getLogger("ccsdspy").setLevel(logging.WARNING)
    logging.disable(logging.INFO)


# --------------------------------------------------------------------------------------------- (a)


def _simulate_quietly(*args, **kwargs):
    from punchpipe_assets.simulate import simulate

    return simulate(*args, **kwargs)


def _set_packet_state(catalog, steady: bool) -> None:
    """steady: every packet used (Level 0 caught up); else all pending, never attempted (as registered)."""
    from sqlalchemy import update

    from punchpipe_assets.resources.catalog import Packet, utcnow

    values = {"state": "used", "last_attempt": utcnow()} if steady else {"state": "pending", "last_attempt": None}
    with catalog.session() as session:
        session.execute(update(Packet).values(reason=None, **values))


def _timed_tick(catalog, config, files: list[Path]) -> float:
    from punchpipe_assets.sensors.landing import scan_landing

    for path in files:
        shutil.copy(path, config.landing_dir)
    start = time.perf_counter()
    scan = scan_landing(catalog, config)  # max_files: the sensor default (20) > 4 new files
    elapsed = time.perf_counter() - start
    assert len(scan.ingested) == len(files), scan
    return elapsed


def bench_landing(work: Path, n_files: int, repeats: int) -> dict:
    """Part (a): sensor tick with n_files registered + 4 new, versus 4 new in an empty catalog.

    The cases are interleaved tick by tick (the machine may be shared), the first round is a warm-up.
    """
    from sqlalchemy import func, select

    from punchpipe_assets.resources.catalog import CatalogResource, Packet, TelemetryFile
    from punchpipe_assets.sensors.landing import _hours_needing_attempts, new_landing_files, scan_landing

    rounds = repeats + 1
    new_sets = []
    for k in range(2 * rounds + 1):
        report = _simulate_quietly(
            NEW_START + timedelta(hours=k),
            1 / 60,
            work / "new" / str(k),
            size=SMALL_SIZE,
            seed=100 + k,
            downlink_minutes=1,
        )
        new_sets.append(report.files)

    # Big catalog: n_files small distinct downlinks simulated straight into the landing folder.
    config = _config(work / "big")
    catalog = CatalogResource(url=config.catalog_url)
    minutes = -(-n_files // 4)
    start = time.perf_counter()
    _simulate_quietly(MANY_START, minutes / 60, config.landing_dir, size=SMALL_SIZE, seed=7, downlink_minutes=1)
    simulate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    while scan_landing(catalog, config, max_files=100_000).remaining:
        pass
    register_seconds = time.perf_counter() - start
    with catalog.session() as session:
        n_registered = session.scalar(select(func.count(TelemetryFile.id)))
        n_packets = session.scalar(select(func.count(Packet.id)))

    times: dict[str, list[float]] = {"empty": [], "nearly_empty": [], "backlog": [], "steady": []}
    for k in range(rounds):
        small = _config(work / f"empty{k}")
        small_catalog = CatalogResource(url=small.catalog_url)
        small_catalog.engine  # noqa: B018 - create the tables outside the timing
        tick = {
            "empty": _timed_tick(small_catalog, small, new_sets[k]),
            "nearly_empty": _timed_tick(small_catalog, small, new_sets[k + 1]),
        }
        _set_packet_state(catalog, steady=False)
        tick["backlog"] = _timed_tick(catalog, config, new_sets[2 * k + 1])
        _set_packet_state(catalog, steady=True)
        tick["steady"] = _timed_tick(catalog, config, new_sets[2 * k + 2])
        if k:  # the first round warms up (imports, caches)
            for name, seconds in tick.items():
                times[name].append(seconds)

    # Where a tick with no new file goes: the parts of scan_landing that grow with the catalog.
    parts = {}
    with catalog.session() as session:
        start = time.perf_counter()
        known = set(session.scalars(select(TelemetryFile.name)))
        parts["load all registered names"] = time.perf_counter() - start
    start = time.perf_counter()
    new_landing_files(config, known, datetime.now().timestamp())
    parts["scandir landing folder, filter names"] = time.perf_counter() - start
    for steady in (False, True):
        _set_packet_state(catalog, steady=steady)
        label = "steady" if steady else "backlog"
        with catalog.session() as session:
            start = time.perf_counter()
            _hours_needing_attempts(session, config)
            parts[f"_hours_needing_attempts ({label})"] = time.perf_counter() - start
        start = time.perf_counter()
        scan_landing(catalog, config)
        parts[f"whole tick, no new file ({label})"] = time.perf_counter() - start

    return {
        "n_files": n_registered,
        "n_packets": n_packets,
        "simulate_s": simulate_seconds,
        "register_s": register_seconds,
        "times": times,
        "parts": parts,
    }


# --------------------------------------------------------------------------------------------- (b)

PUNCHBOWL_IMPORTS = """
import quaternion
from punchbowl.auto.flows.level0 import form_preliminary_wcs, organize_spacecraft_position_keywords
from punchbowl.data import NormalizedMetadata, write_ndcube_to_fits
from punchbowl.data.punch_io import _update_statistics
from punchbowl.data.punchcube import PUNCHCube
"""


def child(side: str, home: Path) -> None:
    """One side of part (b), in a fresh interpreter; prints one JSON line."""
    t_process = time.perf_counter()
    _quiet_logs()
    import dagster as dg
    from sqlalchemy import func, select

    from punchpipe_assets.cameras import CAMERA_BY_OBS
    from punchpipe_assets.cli import run_process
    from punchpipe_assets.level0.formation import Level0Former
    from punchpipe_assets.resources import ArchiveResource, CatalogResource
    from punchpipe_assets.resources.catalog import ProductFile
    from punchpipe_assets.sensors.landing import scan_landing
    from punchpipe_assets.telemetry.packets import load_packet_set

    warnings.filterwarnings("ignore")
    punchbowl_loaded_early = "punchbowl" in sys.modules
    t_base_imports = time.perf_counter() - t_process

    start = time.perf_counter()
    exec(PUNCHBOWL_IMPORTS, {})  # noqa: S102 - the modules _build_cube and write_cube import lazily
    t_punchbowl = time.perf_counter() - start

    config = _config(home)
    catalog = CatalogResource(url=config.catalog_url)
    result: dict = {"side": side, "punchbowl_loaded_by_base_imports": punchbowl_loaded_early}
    if side == "dagster":
        with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
            load_before, cpu_start, start = os.getloadavg()[0], time.process_time(), time.perf_counter()
            summary = run_process(config, instance, show_progress=False)
            t_run, cpu_run = time.perf_counter() - start, time.process_time() - cpu_start
        result["summary"] = summary
    else:
        archive = ArchiveResource(root=str(config.archive_dir))
        packet_set = load_packet_set(config.telemetry_definitions)
        load_before, cpu_start, start = os.getloadavg()[0], time.process_time(), time.perf_counter()
        scan = scan_landing(catalog, config, max_files=10**6)
        result["register_s"] = time.perf_counter() - start
        statuses: dict[str, int] = {}
        for request in scan.requests:
            hour = request.first_hour
            while hour <= request.last_hour:
                for obs in request.observatories:
                    with catalog.session() as session:
                        former = Level0Former(
                            session, archive, config.level0, packet_set, landing_dir=config.landing_dir
                        )
                        outcome = former.form_window(CAMERA_BY_OBS[obs], hour, hour + timedelta(hours=1))
                    for image in outcome.images:
                        statuses[image.status] = statuses.get(image.status, 0) + 1
                hour += timedelta(hours=1)
        t_run, cpu_run = time.perf_counter() - start, time.process_time() - cpu_start
        result["statuses"] = statuses
    with catalog.session() as session:
        result["images"] = session.scalar(select(func.count(ProductFile.id)).where(ProductFile.level == "0"))
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    result |= {
        "base_imports_s": t_base_imports,
        "punchbowl_import_s": t_punchbowl,
        "run_s": t_run,
        "run_cpu_s": cpu_run,
        "process_cpu_s": usage.ru_utime + usage.ru_stime,
        "subprocess_cpu_s": sum(
            getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) for f in ("ru_utime", "ru_stime")
        ),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "in_process_s": time.perf_counter() - t_process,
        "peak_rss_mb": _peak_rss_mb(),
    }
    print("RESULT " + json.dumps(result, default=str), flush=True)


def run_child(side: str, home: Path) -> dict:
    """Run one side of part (b) in a fresh interpreter and return its result with the process wall time."""
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, __file__, "--child", side, "--home", str(home)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
        check=False,
    )
    wall = time.perf_counter() - start
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        sys.stderr.write(completed.stdout[-5000:] + completed.stderr[-5000:])
        raise SystemExit(f"{side} child failed (exit {completed.returncode})")
    return json.loads(lines[-1][len("RESULT ") :]) | {"process_wall_s": wall}


def bench_throughput(work: Path, size: int, hours: float, repeats: int) -> tuple[list[dict], int]:
    """Part (b): the same telemetry through Dagster and through a plain loop, fresh process each."""
    report = _simulate_quietly(SIM_START, hours, work / "sim", size=size, seed=0)
    results = []
    for k in range(repeats):
        for side in ("plain", "dagster") if k % 2 == 0 else ("dagster", "plain"):
            home = work / f"{side}{k}"
            config = _config(home)
            for path in report.files:
                shutil.copy(path, config.landing_dir)
            results.append(run_child(side, home))
    return results, len(report.images)


# ------------------------------------------------------------------------------------------ report


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def print_landing(result: dict) -> None:
    """Print the landing-sensor tick times of part (a)."""
    times = result["times"]
    median = {name: statistics.median(values) for name, values in times.items()}
    empty = median["empty"]
    n = result["n_files"]
    print(
        f"\n(a) landing-sensor tick: scan_landing() registering 4 new {SMALL_SIZE}x{SMALL_SIZE}-pixel downlinks "
        f"(median of {len(times['empty'])} ticks per case, cases interleaved)"
    )
    print(
        f"    setup: {n} registered files ({result['n_packets']} packets), distinct 1-minute downlinks; "
        f"simulated in {result['simulate_s']:.1f} s, registered in {result['register_s']:.1f} s "
        f"({result['register_s'] / max(n, 1) * 1000:.1f} ms/file)"
    )
    rows = [
        ("empty", "only the 4 new files, fresh empty catalog"),
        ("nearly_empty", "4 new files, catalog holding 4 files"),
        ("backlog", f"4 new + {n} registered, images pending"),
        ("steady", f"4 new + {n} registered, all packets used"),
    ]
    for name, label in rows:
        ratio = "" if name == "empty" else f"   ratio {median[name] / empty:.2f}x"
        print(f"    {label:44s}: {_fmt(median[name]):>9s}{ratio}")
    for name, _ in rows:
        print(f"      {name} ticks (ms): {[round(t * 1000, 1) for t in times[name]]}")
    print(f"    parts of a tick with no new file, {n} registered:")
    for name, seconds in result["parts"].items():
        print(f"      {name:40s} {_fmt(seconds)}")


def print_throughput(results: list[dict], n_images: int, size: int, hours: float) -> None:
    """Print the Level 0 throughput of both sides in part (b)."""
    print(
        f"\n(b) Level 0 throughput: {hours} h of telemetry at {size}x{size} ({n_images} images), each side in a "
        "fresh subprocess with its own catalog, archive and landing folder"
    )
    print("    run = registration + formation (dagster: run_process; plain: scan_landing + form_window loop);")
    print(
        "    +pb = run + punchbowl import; process = whole fresh subprocess as the parent sees it; "
        "cpu = CPU seconds of the run"
    )
    print(
        f"    {'side':8s} {'images':>6s} {'run s':>7s} {'img/min':>7s} {'+pb s':>7s} {'img/min':>7s} "
        f"{'process s':>9s} {'img/min':>7s} {'cpu s':>7s} {'img/cpu-min':>11s} {'peak RSS':>9s} {'load avg':>9s}"
    )
    rates: dict[str, list[tuple[float, ...]]] = {}
    for r in results:
        images = r["images"]
        with_import = r["run_s"] + r["punchbowl_import_s"]
        rate = (
            60 * images / r["run_s"],
            60 * images / with_import,
            60 * images / r["process_wall_s"],
            60 * images / r["run_cpu_s"],
        )
        rates.setdefault(r["side"], []).append(rate)
        print(
            f"    {r['side']:8s} {images:6d} {r['run_s']:7.1f} {rate[0]:7.1f} {with_import:7.1f} {rate[1]:7.1f} "
            f"{r['process_wall_s']:9.1f} {rate[2]:7.1f} {r['run_cpu_s']:7.1f} {rate[3]:11.1f} "
            f"{r['peak_rss_mb']:6.0f} MB {r['load_before']:4.1f}>{r['load_after']:<4.1f}"
        )
    for r in results:
        extra = (
            f"registration {r['register_s']:.1f} s of the run, statuses {r['statuses']}"
            if r["side"] == "plain"
            else f"summary {r['summary']}"
        )
        print(
            f"    {r['side']}: imports dagster+punchpipe_assets {r['base_imports_s']:.1f} s, punchbowl "
            f"{r['punchbowl_import_s']:.1f} s; CPU of its own subprocesses {r['subprocess_cpu_s']:.1f} s; {extra}"
        )
    if "dagster" in rates and "plain" in rates:
        print("    ratio dagster / plain, images per minute (median per side):")
        labels = (
            "run only (punchbowl already imported)",
            "run + punchbowl import",
            "whole fresh process (operator's first run)",
            "per CPU-minute of the run",
        )
        for i, label in enumerate(labels):
            dagster = statistics.median(x[i] for x in rates["dagster"])
            plain = statistics.median(x[i] for x in rates["plain"])
            print(f"      {label:44s} {dagster:7.1f} / {plain:7.1f} = {dagster / plain:.3f}")


def main() -> None:
    """Run the Level 0 benchmark (or, with ``--child``, one side of it) and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="frame size for (b) (2048: flight size)")
    parser.add_argument("--hours", type=float, default=0.25, help="hours of telemetry for (b)")
    parser.add_argument("--files", type=int, default=10_000, help="registered telemetry files for (a)")
    parser.add_argument("--tick-repeats", type=int, default=5, help="timed ticks per case in (a)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side in (b)")
    parser.add_argument("--only", choices=("landing", "throughput"), default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="kept if given; default: a temporary folder")
    parser.add_argument("--child", choices=("dagster", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home)
        return

    _quiet_logs()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_level0_"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"bench_level0: size={args.size} hours={args.hours} files={args.files} (work folder {work}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]})",
        flush=True,
    )
    try:
        if args.only in (None, "throughput"):
            results, n_images = bench_throughput(work / "b", args.size, args.hours, args.repeats)
            print_throughput(results, n_images, args.size, args.hours)
        if args.only in (None, "landing"):
            print_landing(bench_landing(work / "a", args.files, args.tick_repeats))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
