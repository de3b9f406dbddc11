"""Measure candidate speed-ups of ``punchpipe_assets/formation.py`` without editing it.

Usage::

    .venv/bin/python benchmarks/level0_wins.py [--size 2048] [--hours 0.25]

Forms the Level 0 images of one camera while capturing the inputs of the expensive calls that
``Level0Former._build_cube`` makes, then times, on those real inputs, the current call against
the alternative and checks that the results agree:

1. CROTA: ``meta.to_fits_header(wcs, False)["CROTA"]`` (a whole header, Sun ephemerides and all)
   versus ``extract_crota_from_wcs(wcs)`` (what to_fits_header itself puts in CROTA).
2. Metadata template: ``NormalizedMetadata.load_template(code, "0")`` per image versus one cached
   template per product code, deep-copied per image.
3. Spacecraft position keywords: ``organize_spacecraft_position_keywords`` once per image versus
   once per window with arrays (astropy/sunpy transforms are vectorized).
4. Engineering packets: ``_decode_one`` per image (the same attitude packet is decoded for several
   images) versus a per-former cache by packet id.
5. Image statistics: punchbowl's ``_update_statistics`` versus the same keywords from a histogram
   (``np.bincount``; pixels are 10-bit square-root coded integers).
6. For reference (punchbowl's side): the celestial WCS recomputed inside write_ndcube_to_fits.
7. Memory layout of the decoded image (a transposed view) for statistics and FITS writing.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
import types
import warnings
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np

os.environ.setdefault("PREFECT_HOME", "/tmp/prefecthome")
warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))

from bench_level0 import PUNCHBOWL_IMPORTS, SIM_START, _config, _quiet_logs  # noqa: E402

CAPTURED: dict[str, list] = {"position": [], "template": [], "crota": [], "stats": [], "decode_one": []}
ORIGINAL: dict[str, object] = {}


def best_of(function, repeats: int = 3) -> float:
    """Best wall time of a few calls (the machine may be shared)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def install_capture():
    """Wrap the calls to capture; returns a function that removes the wrappers."""
    import punchbowl.auto.flows.level0 as pb_level0
    import punchbowl.data.punch_io as pb_io
    from punchbowl.data import NormalizedMetadata

    import punchpipe_assets.formation as formation

    position = ORIGINAL["organize"] = pb_level0.organize_spacecraft_position_keywords

    def capture_position(observation_time, xact_db, xact):
        CAPTURED["position"].append((observation_time, xact_db, dict(xact)))
        return position(observation_time, xact_db, xact)

    pb_level0.organize_spacecraft_position_keywords = capture_position

    load_template = NormalizedMetadata.load_template.__func__
    saved_template = NormalizedMetadata.__dict__["load_template"]

    def capture_template(cls, *args, **kwargs):
        CAPTURED["template"].append((args, kwargs))
        return load_template(cls, *args, **kwargs)

    NormalizedMetadata.load_template = classmethod(capture_template)

    to_fits_header = NormalizedMetadata.to_fits_header

    def capture_header(self, wcs=None, write_celestial_wcs=True, celestial_wcs=None):
        if write_celestial_wcs is False:  # the CROTA call of _build_cube
            CAPTURED["crota"].append((copy.deepcopy(self), wcs))
        return to_fits_header(self, wcs, write_celestial_wcs, celestial_wcs)

    NormalizedMetadata.to_fits_header = capture_header

    update_statistics = ORIGINAL["stats"] = pb_io._update_statistics

    def capture_stats(cube, modify_inplace=False):
        # the array itself (as decoded: a transposed, Fortran-ordered view), not a copy
        CAPTURED["stats"].append((cube.data, float(cube.meta["DSATVAL"].value), copy.deepcopy(cube.meta)))
        return update_statistics(cube, modify_inplace)

    pb_io._update_statistics = capture_stats

    decode_one = ORIGINAL["decode_one"] = formation._decode_one

    def capture_decode_one(packet_set, reader, packet):
        CAPTURED["decode_one"].append((packet.id, packet.telemetry_file.path, packet.byte_offset, packet.length))
        return decode_one(packet_set, reader, packet)

    formation._decode_one = capture_decode_one

    def uninstall() -> None:
        pb_level0.organize_spacecraft_position_keywords = position
        NormalizedMetadata.load_template = saved_template
        NormalizedMetadata.to_fits_header = to_fits_header
        pb_io._update_statistics = update_statistics
        formation._decode_one = decode_one

    return uninstall


def histogram_statistics(data: np.ndarray, saturation: float) -> dict[str, float]:
    """The keywords of punchbowl's ``_update_statistics`` from a histogram of integer pixels."""
    counts = np.bincount(data.ravel(order="K"))  # order K: no copy of a transposed view
    values = np.arange(counts.size)
    result: dict[str, float] = {"DATAZER": int(counts[0]),
                                "DATASAT": int(counts[int(np.ceil(saturation)):].sum())}
    counts[0] = 0
    n = int(counts.sum())
    cumulative = np.cumsum(counts)
    mean = float((counts * values).sum()) / n  # exact: integer sum, as np.mean's pairwise float64 sum

    def order_statistic(k: np.ndarray) -> np.ndarray:  # the k-th smallest nonzero pixel (0-based)
        return np.searchsorted(cumulative, k, side="right").astype(np.float64)

    def percentile(q: np.ndarray) -> np.ndarray:  # numpy's "linear" method, same arithmetic
        index = np.asarray(q, dtype=np.float64) / 100 * (n - 1)
        lower = np.floor(index)
        t = index - lower
        a, b = order_statistic(lower.astype(np.int64)), order_statistic(np.minimum(lower + 1, n - 1).astype(np.int64))
        diff = b - a
        return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)

    result["DATAAVG"] = mean
    result["DATAMDN"] = float(percentile(np.array([50.0]))[0])
    result["DATASIG"] = float(np.sqrt((counts * (values - mean) ** 2).sum() / n))
    quantiles = (1, 10, 25, 50, 75, 90, 95, 98, 99)
    for q, value in zip(quantiles, percentile(np.array(quantiles, dtype=np.float64)), strict=True):
        result[f"DATAP{q:02d}"] = float(value)
    nonzero = np.nonzero(counts)[0]
    result["DATAMIN"], result["DATAMAX"] = float(nonzero[0]), float(nonzero[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--hours", type=float, default=0.25)
    args = parser.parse_args()
    _quiet_logs()

    from punchpipe_assets.cameras import CAMERAS
    from punchpipe_assets.formation import Level0Former
    from punchpipe_assets.resources import ArchiveResource, CatalogResource
    from punchpipe_assets.sensors.landing import scan_landing
    from punchpipe_assets.simulate import simulate
    from punchpipe_assets.telemetry.packets import load_packet_set

    exec(PUNCHBOWL_IMPORTS, {})  # noqa: S102
    import astropy.units as u
    import punchbowl.auto.flows.level0 as pb_level0
    import punchbowl.data.punch_io as pb_io
    from punchbowl.data import NormalizedMetadata
    from punchbowl.data.punchcube import PUNCHCube
    from punchbowl.data.wcs import extract_crota_from_wcs

    import punchpipe_assets.formation as formation

    work = Path(tempfile.mkdtemp(prefix="level0_wins_"))
    try:
        config = _config(work / "home")
        camera = CAMERAS[0]
        simulate(SIM_START, args.hours, config.landing_dir, size=args.size, seed=0, cameras=[camera])
        catalog = CatalogResource(url=config.catalog_url)
        scan_landing(catalog, config, max_files=10**6)
        archive = ArchiveResource(root=str(config.archive_dir))
        packet_set = load_packet_set(config.telemetry_definitions)
        with catalog.session() as session:  # warm-up image, not captured
            Level0Former(session, archive, config.level0, packet_set).form_window(
                camera, SIM_START, SIM_START + timedelta(seconds=10))
        uninstall = install_capture()
        start = time.perf_counter()
        with catalog.session() as session:
            outcome = Level0Former(session, archive, config.level0, packet_set).form_window(
                camera, SIM_START, SIM_START + timedelta(hours=args.hours))
        wall = time.perf_counter() - start
        uninstall()
        n = outcome.count("made")
        print(f"camera {camera.obs}, {args.size}x{args.size}: {n} images formed in {wall:.1f} s "
              f"({wall / n * 1000:.0f} ms/image, capture overhead included)\n")

        # 1. CROTA
        meta, wcs = CAPTURED["crota"][0]
        full = best_of(lambda: meta.to_fits_header(wcs, False)["CROTA"])
        direct = best_of(lambda: extract_crota_from_wcs(wcs).to(u.deg).value, 20)
        same = all(m.to_fits_header(w, False)["CROTA"] == extract_crota_from_wcs(w).to(u.deg).value
                   for m, w in CAPTURED["crota"])
        print(f"1. CROTA: to_fits_header(wcs, False)['CROTA'] {full * 1000:.1f} ms vs extract_crota_from_wcs "
              f"{direct * 1000:.3f} ms per image; identical on all {len(CAPTURED['crota'])} images: {same}")

        # 2. template
        (template_args, template_kwargs) = CAPTURED["template"][0]
        codes = Counter(a[0] for a, _ in CAPTURED["template"])
        load = best_of(lambda: NormalizedMetadata.load_template(*template_args, **template_kwargs))
        cached = NormalizedMetadata.load_template(*template_args, **template_kwargs)
        deep = best_of(lambda: copy.deepcopy(cached), 5)
        equal = copy.deepcopy(cached) == NormalizedMetadata.load_template(*template_args, **template_kwargs)
        print(f"2. template: load_template {load * 1000:.1f} ms vs deepcopy of a cached template {deep * 1000:.2f} ms "
              f"per image; equal: {equal}; product codes in the window: {dict(codes)}")

        # 3. spacecraft position keywords, vectorized over the window
        captured = []  # one (time, xact packet, scalar values) per image, however formation.py called it
        for when, xact_db, xact in CAPTURED["position"]:
            if np.ndim(next(iter(xact.values()))) == 0:
                captured.append((when, xact_db, xact))
            else:  # already one vectorized call per window (formation.py since 7ab3e63)
                captured += [(t, xact_db, {k: np.asarray(v)[i] for k, v in xact.items()}) for i, t in enumerate(when)]
        already = len(CAPTURED["position"]) < len(captured)
        organize = pb_level0.organize_spacecraft_position_keywords
        loop = best_of(lambda: [organize(t, x_db, x) for t, x_db, x in captured], 1)
        per_image = [organize(t, x_db, x) for t, x_db, x in captured]
        times = np.array(list(t for t, _, _ in captured), dtype="datetime64[us]")
        arrays = {key: np.array([x[key] for _, _, x in captured]) for key in captured[0][2]
                  if key.startswith("GPS_")}
        proxy = types.SimpleNamespace(timestamp=captured[0][1].timestamp)

        def vectorized():
            from astropy.time import Time

            return organize(Time(times), proxy, arrays)

        batch_time = best_of(vectorized, 1)
        batch = vectorized()
        worst = 0.0
        for i, single in enumerate(per_image):
            for key, value in single.items():
                if key == "XACTTIME":
                    continue
                other = float(np.asarray(batch[key]).ravel()[i])
                worst = max(worst, abs(other - value) / max(abs(value), 1e-300))
        print(f"3. organize_spacecraft_position_keywords: {len(captured)} calls {loop:.2f} s "
              f"({loop / len(captured) * 1000:.0f} ms/image) vs one call on arrays {batch_time:.2f} s "
              f"({batch_time / len(captured) * 1000:.0f} ms/image); max relative difference {worst:.1e} "
              f"(XACTTIME set per image from its packet); formation.py already batches: {already}")

        # 4. engineering packet decodes
        decodes = CAPTURED["decode_one"]
        distinct = len({packet_id for packet_id, *_ in decodes})
        reader = formation.PacketReader()
        with catalog.session() as session:
            from sqlalchemy import select

            from punchpipe_assets.resources.catalog import Packet

            packets = {p.id: p for p in session.scalars(select(Packet).where(
                Packet.id.in_([packet_id for packet_id, *_ in decodes])))}
            for p in packets.values():
                p.telemetry_file  # noqa: B018 - load the relationship
            per_decode = best_of(lambda: [formation._decode_one(packet_set, reader, packets[i])
                                          for i, *_ in decodes], 1) / len(decodes)
        reader.close()
        print(f"4. _decode_one: {len(decodes)} decodes for {n} images, {distinct} distinct packets; "
              f"{per_decode * 1000:.1f} ms per decode -> a cache by packet id saves "
              f"{(len(decodes) - distinct) * per_decode / n * 1000:.1f} ms/image")

        # 5. statistics
        data, saturation, meta = CAPTURED["stats"][0]
        cube = PUNCHCube(data=data, meta=copy.deepcopy(meta), wcs=CAPTURED["crota"][0][1])
        punchbowl_time = best_of(lambda: pb_io._update_statistics(cube, False))
        histogram_time = best_of(lambda: histogram_statistics(data, saturation), 5)
        mismatches = []
        for data, saturation, meta in CAPTURED["stats"]:
            cube = PUNCHCube(data=data, meta=copy.deepcopy(meta), wcs=CAPTURED["crota"][0][1])
            reference = pb_io._update_statistics(cube, False)
            for key, value in histogram_statistics(data, saturation).items():
                expected = reference[key].value
                if value != expected:
                    mismatches.append((key, value, expected))
        worst_stat = max((abs(a - b) / max(abs(b), 1e-300) for _, a, b in mismatches), default=0.0)
        print(f"5. statistics: punchbowl _update_statistics {punchbowl_time * 1000:.0f} ms vs histogram "
              f"{histogram_time * 1000:.1f} ms per image; {len(mismatches)} keyword values differ over "
              f"{len(CAPTURED['stats'])} images (keys {sorted({k for k, *_ in mismatches})}, max relative "
              f"difference {worst_stat:.1e})")

        # 6. punchbowl side, for reference: the celestial WCS that write_ndcube_to_fits recomputes from the
        #    helio WCS (form_preliminary_wcs built a celestial WCS first but does not return it).
        from punchbowl.data.wcs import calculate_celestial_wcs_from_helio

        meta, wcs = CAPTURED["crota"][0]
        celestial = best_of(lambda: calculate_celestial_wcs_from_helio(wcs, meta.astropy_time, (2048, 2048)))
        header = best_of(lambda: meta.to_fits_header(wcs, True))
        print(f"6. (punchbowl) write_ndcube_to_fits' to_fits_header {header * 1000:.0f} ms per image, of which "
              f"calculate_celestial_wcs_from_helio {celestial * 1000:.0f} ms (avoidable if PUNCHCube got the "
              "celestial WCS that form_preliminary_wcs builds internally)")

        # 7. memory layout: decode_image_payload returns raster.T, a Fortran-ordered view
        from astropy.io import fits
        from punchbowl.data import write_ndcube_to_fits

        data, saturation, meta = CAPTURED["stats"][0]
        wcs = CAPTURED["crota"][0][1]
        contiguous = np.ascontiguousarray(data)
        copy_time = best_of(lambda: np.ascontiguousarray(data), 5)
        layout = {}
        for label, array in (("as decoded", data), ("C-contiguous", contiguous)):
            cube = PUNCHCube(data=array, meta=copy.deepcopy(meta), wcs=wcs)
            stats = best_of(lambda cube=cube: pb_io._update_statistics(cube, False))
            pb_io._update_statistics(cube, True)
            target = work / label.replace(" ", "_") / "PUNCH_L0_PM1_20250801120000_v1.fits"
            target.parent.mkdir()
            write = best_of(lambda cube=cube, target=target: write_ndcube_to_fits(
                cube, str(target), overwrite=True, write_hash=False, skip_stats=True))
            with fits.open(target) as hdul:
                hdul.verify("exception")
                layout[label] = (stats, write, hdul[1].data.copy(), [
                    [(c.keyword, c.value) for c in hdu.header.cards if c.keyword not in ("CHECKSUM", "DATASUM")]
                    for hdu in hdul])
        (s1, w1, d1, h1), (s2, w2, d2, h2) = layout["as decoded"], layout["C-contiguous"]
        identical = np.array_equal(d1, d2) and np.array_equal(d1, data) and h1 == h2
        print(f"7. layout: C-contiguous={data.flags.c_contiguous} as decoded; _update_statistics {s1 * 1000:.0f} -> "
              f"{s2 * 1000:.0f} ms, write_ndcube_to_fits {w1 * 1000:.0f} -> {w2 * 1000:.0f} ms with a C-contiguous "
              f"copy that costs {copy_time * 1000:.1f} ms; same pixels and headers (but checksum dates): {identical}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
