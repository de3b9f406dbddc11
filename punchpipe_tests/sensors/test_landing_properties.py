"""Property of landing: whatever arrives, grows, is copied or damaged, no packet is lost or counted twice."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.config import immediate_config
from punchpipe_assets.resources.catalog import CatalogResource, Packet, TelemetryFile
from punchpipe_assets.sensors.landing import scan_landing
from punchpipe_assets.simulate import simulate
from punchpipe_assets.telemetry import frame_packets, load_packet_set
from punchpipe_assets.telemetry.ingest import DUPLICATE_PREFIX
from punchpipe_tests.conftest import SIMULATION_START

GARBAGE = b"\xe0"  # CCSDS version 7: never a packet


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[bytes]:
    """Small downlinks of two spacecraft, the bytes writers deliver piece by piece."""
    out = tmp_path_factory.mktemp("sources")
    report = simulate(SIMULATION_START, 0.04, out, size=32, seed=11, packet_payload_bytes=256, cameras=CAMERAS[:2])
    return [path.read_bytes() for path in report.files]


@dataclass
class Landed:
    """A file in the landing folder as the test wrote it: its bytes and how far into its source."""

    path: Path
    source: int
    position: int
    content: bytes


operations = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.integers(0, 1), st.floats(0, 1)),
        st.tuples(st.just("grow"), st.integers(0, 50), st.floats(0, 1)),
        st.tuples(st.just("duplicate"), st.integers(0, 50)),
        st.tuples(st.just("damage"), st.integers(0, 50), st.binary(max_size=24)),
        st.tuples(st.just("garbage"), st.binary(max_size=24)),
        st.just(("scan",)),
    ),
    max_size=8,
)


def apply(operation: tuple, landed: list[Landed], landing: Path, sources: list[bytes]) -> None:
    """Do one thing a ground station or its writer might do to the landing folder."""
    kind, *args = operation
    live = [file for file in landed if file.path.exists()]
    if kind == "arrive":
        source, fraction = args
        position = int(len(sources[source]) * fraction)
        landed.append(Landed(landing / f"F{len(landed)}.tlm", source, position, sources[source][:position]))
        landed[-1].path.write_bytes(landed[-1].content)
    elif kind == "garbage":
        landed.append(Landed(landing / f"F{len(landed)}.tlm", 0, 0, GARBAGE + args[0]))
        landed[-1].path.write_bytes(landed[-1].content)
    elif live and kind == "grow":
        file = live[args[0] % len(live)]
        data = sources[file.source]
        end = file.position + int((len(data) - file.position) * args[1])
        file.content += data[file.position : end]
        file.position = end
        file.path.write_bytes(file.content)
    elif live and kind == "duplicate":
        file = live[args[0] % len(live)]
        landed.append(Landed(landing / f"F{len(landed)}.tlm", file.source, file.position, file.content))
        landed[-1].path.write_bytes(file.content)
    elif live and kind == "damage":
        file = live[args[0] % len(live)]
        file.content += GARBAGE + args[1]
        file.path.write_bytes(file.content)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=operations)
def test_landing_never_loses_a_packet_nor_counts_one_twice(sources, steps):
    """Account for every packet in the landing folder exactly once, after any sequence of events."""
    packet_set = load_packet_set()
    with tempfile.TemporaryDirectory() as home:
        config = immediate_config(Path(home) / "home")
        config.make_dirs()
        catalog = CatalogResource(url=config.catalog_url)
        landed: list[Landed] = []
        for step in steps:
            if step == ("scan",):
                scan_landing(catalog, config)
            else:
                apply(step, landed, Path(config.landing_dir), sources)
        scan_landing(catalog, config)

        with catalog.session() as session:
            files = {row.name: row for row in session.scalars(select(TelemetryFile))}
            rows = session.execute(
                select(TelemetryFile.name, Packet.index_in_file, Packet.byte_offset, Packet.digest, Packet.reason).join(
                    TelemetryFile, Packet.telemetry_file_id == TelemetryFile.id
                )
            ).all()
        by_file: dict[str, set] = {}
        for name, index, offset, digest, _ in rows:
            by_file.setdefault(name, set()).add((index, offset, digest))
        originals = Counter(digest for *_, digest, reason in rows if not (reason or "").startswith(DUPLICATE_PREFIX))

        present: set[str] = set()
        for file in landed:
            framed = frame_packets(file.content, packet_set).packets
            record = files[file.path.name]
            if not file.path.exists():  # quarantined: it held no packet at all
                assert record.state == "quarantined" and framed == [], (file, record.reason)
                continue
            present |= {packet.digest for packet in framed}
            if record.state == "duplicate":
                assert by_file.get(file.path.name) is None and record.sha256 != ""
                continue
            expected = {(packet.index, packet.offset, packet.digest) for packet in framed}
            assert by_file.get(file.path.name, set()) == expected, (file.path.name, record.state, record.reason)
            assert record.size == len(file.content) and record.n_packets == len(expected)
        assert set(originals) == present  # every packet in the folder is accounted for ...
        assert all(count == 1 for count in originals.values())  # ... exactly once
