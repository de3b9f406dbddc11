"""The archive's "unchanged" check: the full checksum once, then the file's size and time (fault matrix)."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime

import pytest
from sqlalchemy import inspect, select

from punchpipe_assets.resources import archive as archive_module
from punchpipe_assets.resources.archive import ArchiveResource, sha256_of
from punchpipe_assets.resources.catalog import CatalogResource, ProductFile


def catalogued(tmp_path, content: bytes) -> tuple[ArchiveResource, CatalogResource]:
    """Write one archive file and its catalog row."""
    archive = ArchiveResource(root=str(tmp_path / "archive"))
    path = archive.product_path("1", "XM", "1", datetime(2026, 1, 1), "1")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    catalog = CatalogResource(url=f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    with catalog.session() as session:
        session.add(
            ProductFile(
                level="1",
                file_type="XM",
                observatory="1",
                file_version="1",
                date_obs=datetime(2026, 1, 1),
                path=archive.relative(path),
                sha256=sha256_of(path),
                fingerprint="f",
            )
        )
    return archive, catalog


def check(archive: ArchiveResource, catalog: CatalogResource) -> bool:
    """Check the row as a new run does (a new process: nothing remembered but the catalog)."""
    archive_module._CHECKED.clear()
    with catalog.session() as session:
        return archive.holds_product(session.scalars(select(ProductFile)).one())


def test_a_confirmed_file_is_trusted_by_size_and_time_and_read_again_once_either_changes(tmp_path):
    archive, catalog = catalogued(tmp_path, b"product bytes")
    with catalog.session() as session:
        assert session.scalars(select(ProductFile)).one().size is None  # not yet confirmed
    assert check(archive, catalog)
    with catalog.session() as session:
        row = session.scalars(select(ProductFile)).one()
        path = archive.absolute(row.path)
        assert (row.size, row.mtime_ns) == (path.stat().st_size, path.stat().st_mtime_ns)

    # Damage that keeps size and time is not read by the cheap check (verify reads every file) ...
    status = path.stat()
    path.write_bytes(b"PRODUCT BYTES")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert check(archive, catalog)
    # ... a file written to since has another time: read again, found damaged.
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))
    assert not check(archive, catalog)
    path.unlink()
    assert not check(archive, catalog)


def test_a_new_checksum_forgets_the_stamp_and_an_old_catalog_gains_the_columns(tmp_path):
    archive, catalog = catalogued(tmp_path, b"first")
    assert check(archive, catalog)
    with catalog.session() as session:
        row = session.scalars(select(ProductFile)).one()
        row.sha256 = "0" * 64
        assert row.size is None and row.mtime_ns is None
    assert not check(archive, catalog)

    # A catalog made before the stamp columns existed gains them when opened.
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as connection:
        connection.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT, sha256 VARCHAR(64))")
    columns = {c["name"] for c in inspect(CatalogResource(url=f"sqlite:///{old}").engine).get_columns("files")}
    assert {"path", "size", "mtime_ns"} <= columns


def test_a_file_is_replaced_atomically_and_a_failed_write_leaves_the_old_one(tmp_path):
    """Readers see the old file or the new one, never a partial one; a failed write changes nothing."""
    archive = ArchiveResource(root=str(tmp_path / "archive"))
    path = archive.product_path("1", "XM", "1", datetime(2026, 1, 1), "1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"old product")
    reader = open(path, "rb")  # noqa: SIM115 - a reader holding the old file across the replacement
    seen_during_write = []

    def write(temporary) -> None:
        assert temporary.name == path.name and temporary != path  # the final base name, elsewhere
        temporary.write_bytes(b"new ")
        seen_during_write.append(path.read_bytes())  # half-written: the final path still has the old file
        with open(temporary, "ab") as handle:
            handle.write(b"product")

    archive_module.write_atomically(path, write)
    assert seen_during_write == [b"old product"]
    assert path.read_bytes() == b"new product"
    assert reader.read() == b"old product"  # the old file, whole, for a reader that had it open
    reader.close()

    def fail(temporary) -> None:
        temporary.write_bytes(b"half")
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space left"):
        archive_module.write_atomically(path, fail)
    assert path.read_bytes() == b"new product"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no staging folder left
