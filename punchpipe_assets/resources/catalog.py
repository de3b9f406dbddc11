"""The file catalog: the queryable index of telemetry, packets and products.

Dagster's event log records what happened; this catalog indexes what exists, so that operators
and downstream assets can ask "which packets made this file" or "which files came from this
downlink" with one SQL query. The same schema runs on SQLite (embedded default) and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache

import dagster as dg
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from punchpipe_assets.resources.outages import catalog_retry_seconds, retry_connection


def utcnow() -> datetime:
    """Return the current time as a naive UTC datetime (how the catalog stores times)."""
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(when: datetime) -> datetime:
    """Return a time as the catalog stores it: naive UTC (aware times are converted, naive ones kept)."""
    return when if when.tzinfo is None else when.astimezone(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Base of the catalog's tables."""


class TelemetryFile(Base):
    r"""One downlink file seen in the landing folder.

    ``state`` is ``ingested`` (all packets read), ``partial`` (a damaged tail was skipped),
    ``duplicate`` (identical to an earlier file), ``skipped`` (read, but every packet was skipped:
    ``reason`` says why), ``unreadable`` (cannot be read: left in place and tried again at every
    scan) or ``quarantined`` (not a downlink; moved away). ``name`` is the name in the landing
    folder (undecodable bytes as ``\xNN``); ``size`` and ``sha256`` are those last read.
    """

    __tablename__ = "telemetry_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    n_packets: Mapped[int] = mapped_column(Integer, default=0)
    damaged_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    damaged_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    registered_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TelemetryFileState(Base):
    """One state a telemetry file was in: its history (registered, grown, re-read...)."""

    __tablename__ = "telemetry_file_states"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    telemetry_file_id: Mapped[int] = mapped_column(ForeignKey("telemetry_files.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger)
    n_packets: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Packet(Base):
    """One packet of a telemetry file, with where it went.

    ``state``: ``pending`` (not yet used), ``used`` (in a product), ``skipped`` (with ``reason``:
    a replayed duplicate, superseded, part of an undecodable image...).
    """

    __tablename__ = "packets"
    __table_args__ = (
        Index("ix_packets_kind_sc_time", "kind", "spacecraft_id", "timestamp"),
        UniqueConstraint("telemetry_file_id", "index_in_file"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    telemetry_file_id: Mapped[int] = mapped_column(ForeignKey("telemetry_files.id"), index=True)
    index_in_file: Mapped[int] = mapped_column(Integer)
    byte_offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    apid: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    spacecraft_id: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[datetime] = mapped_column(DateTime)
    seq_flag: Mapped[int] = mapped_column(Integer)
    seq_count: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(40), index=True)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_attempt: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    telemetry_file: Mapped[TelemetryFile] = relationship()


class ProductFile(Base):
    """One product in the archive (any level)."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("level", "file_type", "observatory", "date_obs", "file_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[str] = mapped_column(String(1))
    file_type: Mapped[str] = mapped_column(String(2))
    observatory: Mapped[str] = mapped_column(String(1))
    file_version: Mapped[str] = mapped_column(String(16))
    date_obs: Mapped[datetime] = mapped_column(DateTime, index=True)
    acquisition_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    # Size and modification time of the file when its checksum was last confirmed
    # (``ArchiveResource.holds_product``): the cheap "unchanged" check of later runs.
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="created")
    outlier: Mapped[bool] = mapped_column(Boolean, default=False)
    bad_packets: Mapped[bool] = mapped_column(Boolean, default=False)
    flags: Mapped[str | None] = mapped_column(Text, nullable=True)
    mean: Mapped[float | None] = mapped_column(Float, nullable=True)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    partition_key: Mapped[str | None] = mapped_column(String(32), nullable=True)
    date_created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


@event.listens_for(ProductFile.sha256, "set")
def _forget_confirmed_stamp(target: ProductFile, value: str, oldvalue: object, _initiator: object) -> None:
    """Forget the confirmed size and time of a product given another checksum (a new file)."""
    if value != oldvalue:
        target.size = target.mtime_ns = None


class FileRelationship(Base):
    """A product made from another file (product or calibration file)."""

    __tablename__ = "relationships"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)


class FilePacket(Base):
    """A packet that went into a Level 0 product, with its role (image, filter_wheel, attitude)."""

    __tablename__ = "file_packets"
    __table_args__ = (UniqueConstraint("file_id", "packet_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    packet_id: Mapped[int] = mapped_column(ForeignKey("packets.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))


class CalibrationDelivery(Base):
    """One calibration file delivered by the instrument team.

    ``state``: ``active`` (the newest version of its code and camera: selectable), ``superseded``
    (a newer version exists) or ``quarantined`` (unusable, with ``reason``; moved away).
    ``file_id`` is its row in ``files`` once installed in the archive.
    """

    __tablename__ = "calibration_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    code: Mapped[str | None] = mapped_column(String(2), nullable=True)
    observatory: Mapped[str | None] = mapped_column(String(1), nullable=True)
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    registered_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ProductFailure(Base):
    """A product that could not be made from an input file, and why (cleared once it is made).

    ``status``: ``failed`` (punchbowl raised), ``no_calibration`` (no calibration file or model
    to make it with) or ``refused`` (too few inputs). Later levels read it to know that a member
    of a group will not come without a change (a new calibration file, a new code version).
    """

    __tablename__ = "failures"
    __table_args__ = (UniqueConstraint("input_id", "level", "product_code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    level: Mapped[str] = mapped_column(String(1))
    product_code: Mapped[str] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    partition_key: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ModelRefusal(Base):
    """A model of a grid time (or an average of a bin) that was not made, and why (cleared once it is made).

    ``status``: ``refused`` (too few inputs in its window; tried again when more arrive) or
    ``failed`` (punchbowl raised). Unlike ``failures``, keyed by the product that was not made,
    since a refused model may have no input at all.
    """

    __tablename__ = "model_refusals"
    __table_args__ = (UniqueConstraint("level", "product_code", "observatory", "reference_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[str] = mapped_column(String(1))
    product_code: Mapped[str] = mapped_column(String(2))
    observatory: Mapped[str] = mapped_column(String(1))
    reference_time: Mapped[datetime] = mapped_column(DateTime, index=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    partition_key: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Wait(Base):
    """A partition whose products wait for more data until a time (incomplete groups, bins, models).

    Written by the asset at each materialization of the partition (replaced as a whole); the
    ``waits_expired_sensor`` requests the partition again once ``until`` has passed.
    """

    __tablename__ = "waits"
    __table_args__ = (UniqueConstraint("asset_key", "partition_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_key: Mapped[str] = mapped_column(String(128))
    partition_key: Mapped[str] = mapped_column(String(32))
    until: Mapped[datetime] = mapped_column(DateTime, index=True)
    reason: Mapped[str] = mapped_column(Text)


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    """Create the engine of a catalog URL: pre-ping, connections retried through short outages."""
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name != "sqlite":

        @event.listens_for(engine, "do_connect")
        def _patient_connect(dialect, _record, cargs, cparams):
            # Pre-ping finds connections a restart broke; new ones wait (bounded) for the server.
            return retry_connection(
                lambda: dialect.loaded_dbapi.connect(*cargs, **cparams), catalog_retry_seconds(), "catalog"
            )

    else:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


#: Nullable columns added after the first catalogs were made: (table, column, SQL type).
_LATER_COLUMNS = (("files", "size", "BIGINT"), ("files", "mtime_ns", "BIGINT"))


def _add_missing_columns(engine: Engine) -> None:
    """Add the later nullable columns to a catalog made before them (``create_all`` adds only tables)."""
    columns = {
        table: {c["name"] for c in inspect(engine).get_columns(table)} for table in {t for t, _, _ in _LATER_COLUMNS}
    }
    with engine.begin() as connection:
        for table, column, sql_type in _LATER_COLUMNS:
            if column not in columns[table]:
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


class CatalogResource(dg.ConfigurableResource):
    """The file catalog, reached by a SQLAlchemy URL.

    Attributes
    ----------
    url
        SQLAlchemy URL, e.g. ``sqlite:///var/catalog.sqlite`` or
        ``postgresql+psycopg2://user@host/punchpipe`` (credentials from the environment).

    """

    url: str

    @property
    def engine(self) -> Engine:
        """The engine (created once per process; creates missing tables)."""
        return _engine(self.url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Open a session that commits on success and rolls back on error."""
        with sessionmaker(self.engine, expire_on_commit=False).begin() as session:
            yield session
