"""Where the time of ``Level0Former.form_image`` goes, per image.

Usage::

    .venv/bin/python benchmarks/profile_level0.py [--size 2048] [--hours 0.25] [--cprofile out.prof]

Simulates telemetry, registers it, imports punchbowl, forms one image to warm up (first-call
costs are reported separately), then forms every other image of every camera with exclusive
wall-clock timers wrapped around the steps of ``form_image`` (nothing in formation.py or
punchbowl is changed on disk: the wrappers are installed in this process only). A timer's time
excludes the time of timers nested in it; "other" is the rest of ``form_image``. Optionally
writes a cProfile of the timed images too.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import shutil
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", "/tmp/prefecthome")
warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))

from bench_level0 import PUNCHBOWL_IMPORTS, SIM_START, _config, _quiet_logs  # noqa: E402

TOTALS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
_STACK: list[list] = []  # [name, start, child time]


def timed(name: str, function):
    """Wrap a function with an exclusive timer."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        frame = [name, time.perf_counter(), 0.0]
        _STACK.append(frame)
        try:
            return function(*args, **kwargs)
        finally:
            _STACK.pop()
            elapsed = time.perf_counter() - frame[1]
            TOTALS[name] += elapsed - frame[2]
            CALLS[name] += 1
            if _STACK:
                _STACK[-1][2] += elapsed

    wrapper.__wrapped_by_profile__ = True
    return wrapper


def patch(owner, attribute: str, name: str) -> None:
    original = getattr(owner, attribute)
    if isinstance(original, classmethod | staticmethod):
        raise TypeError(attribute)
    setattr(owner, attribute, timed(name, original))


def install_timers() -> None:
    import os as os_module

    import punchbowl.auto.flows.level0 as pb_level0
    import punchbowl.data.punch_io as pb_io
    from punchbowl.data import NormalizedMetadata
    from sqlalchemy.orm import Session

    import punchpipe_assets.formation as formation
    import punchpipe_assets.resources.archive as archive

    patch(formation.Level0Former, "form_window", "form_window: other (window queries, packet state updates)")
    patch(formation.Level0Former, "form_image", "form_image: other (python glue, fingerprint)")
    patch(formation.Level0Former, "_position_keywords", "_position_keywords: other (per-window batch)")
    patch(formation.Level0Former, "_write", "_write: other (ProductFile, lineage rows)")
    patch(formation.Level0Former, "_build_cube", "_build_cube: other (PUNCHCube, meta assignment, imports)")
    patch(formation, "_order_image_packets", "order packets")
    patch(formation, "_nearest", "catalog: _nearest engineering queries (python side)")
    patch(formation, "_decode_one", "_decode_one: engineering packets (python side)")
    patch(formation, "decode_packets", "ccsdspy decode_packets + tai_to_utc")
    patch(formation, "decode_image_payload", "JPEG-LS decode (decode_image_payload)")
    patch(formation, "_interpolate_attitude", "attitude slerp")
    patch(formation, "_parse_fits_time", "parse DATE-OBS")
    patch(formation.PacketReader, "read", "read packet bytes from .tlm")
    for function in ("unpack_compression_settings", "unpack_acquisition_settings", "determine_file_type",
                     "organize_compression_and_acquisition_settings", "organize_gain_info"):
        patch(pb_level0, function, "punchbowl: unpack settings / file type / gain")
    patch(pb_level0, "organize_spacecraft_position_keywords", "punchbowl: organize_spacecraft_position_keywords")
    patch(pb_level0, "form_preliminary_wcs", "punchbowl: form_preliminary_wcs")
    patch(pb_io, "_update_statistics", "punchbowl: _update_statistics")
    patch(NormalizedMetadata, "to_fits_header", "punchbowl: meta.to_fits_header")
    load_template = NormalizedMetadata.load_template.__func__
    NormalizedMetadata.load_template = classmethod(timed("punchbowl: NormalizedMetadata.load_template", load_template))
    # The archive calls punch_io.write_ndcube_to_fits (write_ndcube_deterministically): patch it there.
    patch(pb_io, "write_ndcube_to_fits", "FITS: write_ndcube_to_fits (header, Rice compression, checksum)")
    patch(archive, "write_atomically", "FITS: write_atomically (mkdtemp, rename, cleanup)")
    patch(os_module, "fsync", "FITS: os.fsync")
    patch(archive, "sha256_of", "FITS: sha256 of written file")
    patch(Session, "execute", "catalog: Session.execute (queries, lazy loads, deletes)")
    patch(Session, "scalars", "catalog: Session.scalars (queries)")
    patch(Session, "flush", "catalog: Session.flush (inserts/updates)")
    patch(Session, "commit", "catalog: commit (per window)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--hours", type=float, default=0.25)
    parser.add_argument("--cprofile", type=Path, default=None, help="also write a cProfile of the timed images")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    _quiet_logs()

    from punchpipe_assets.cameras import CAMERAS
    from punchpipe_assets.formation import Level0Former
    from punchpipe_assets.resources import ArchiveResource, CatalogResource
    from punchpipe_assets.sensors.landing import scan_landing
    from punchpipe_assets.simulate import simulate
    from punchpipe_assets.telemetry.packets import load_packet_set

    work = args.workdir or Path(tempfile.mkdtemp(prefix="profile_level0_"))
    try:
        config = _config(work / "home")
        simulate(SIM_START, args.hours, config.landing_dir, size=args.size, seed=0)
        catalog = CatalogResource(url=config.catalog_url)
        scan_landing(catalog, config, max_files=10**6)
        start = time.perf_counter()
        exec(PUNCHBOWL_IMPORTS, {})  # noqa: S102
        print(f"punchbowl import: {time.perf_counter() - start:.2f} s")
        archive = ArchiveResource(root=str(config.archive_dir))
        packet_set = load_packet_set(config.telemetry_definitions)
        end = SIM_START + timedelta(hours=args.hours)

        # Warm-up: the first image of camera 1 (first-call costs: templates, IERS, WCS caches...).
        camera = CAMERAS[0]
        start = time.perf_counter()
        with catalog.session() as session:
            first = Level0Former(session, archive, config.level0, packet_set).form_window(
                camera, SIM_START, SIM_START + timedelta(seconds=10))
        print(f"first image (warm-up, includes first-call costs): {time.perf_counter() - start:.2f} s, "
              f"{[i.status for i in first.images]}")

        install_timers()
        profiler = cProfile.Profile() if args.cprofile else None
        n_images, wall = 0, 0.0
        for camera in CAMERAS:
            start = time.perf_counter()
            if profiler:
                profiler.enable()
            with catalog.session() as session:
                outcome = Level0Former(session, archive, config.level0, packet_set).form_window(
                    camera, SIM_START, end)
            if profiler:
                profiler.disable()
            wall += time.perf_counter() - start
            n_images += outcome.count("made")
        if profiler:
            profiler.dump_stats(str(args.cprofile))

        accounted = sum(TOTALS.values())
        print(f"\nLevel 0 formation (form_window) at {args.size}x{args.size}: {n_images} images, {wall:.1f} s wall "
              f"({wall / n_images * 1000:.0f} ms/image, {60 * n_images / wall:.1f} images/min)"
              f"{' under cProfile' if profiler else ''}; timers cover {accounted / wall:.1%} of the wall time")
        print(f"{'per image (ms)':>15s} {'share':>6s} {'calls/img':>9s}  step")
        for name, seconds in sorted(TOTALS.items(), key=lambda item: -item[1]):
            print(f"{seconds / n_images * 1000:15.1f} {seconds / wall:6.1%} {CALLS[name] / n_images:9.1f}  {name}")
        if profiler:
            print()
            pstats.Stats(str(args.cprofile)).sort_stats("cumulative").print_stats(40)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
