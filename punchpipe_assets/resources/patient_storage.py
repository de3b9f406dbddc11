"""Dagster's PostgreSQL storage, patient with short outages: ``storage: custom:`` in ``dagster.yaml``.

``dagster_postgres`` retries a failed connection five times within about six seconds, then fails
the run ("too many retries for DB connection"): a PostgreSQL restart of some seconds in the middle
of a materialization fails it. These thin subclasses change only how a connection is opened
(``outages.retry_connection``: retried with back-off for ``connect_retry_seconds``, default 120);
everything else, schema and migrations included, is ``dagster_postgres``'s. The storage data they
hand to run workers names these classes again, so every process of a run is as patient.

Use in ``dagster.yaml``::

    storage:
      custom:
        module: punchpipe_assets.resources.patient_storage
        class: PatientPostgresStorage
        config:
          postgres_url: {env: DAGSTER_PG_URL}
          connect_retry_seconds: 120
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster import Field, IntSource
from dagster._core.storage.config import pg_config
from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.storage import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from sqlalchemy.engine import Connection, Engine

from punchpipe_assets.resources.outages import DEFAULT_RETRY_SECONDS, retry_connection

MODULE = __name__


def patient_config() -> dict[str, Any]:
    """Return ``dagster_postgres``'s configuration schema with ``connect_retry_seconds`` added."""
    return {
        **pg_config(),
        "connect_retry_seconds": Field(IntSource, is_required=False, default_value=int(DEFAULT_RETRY_SECONDS)),
    }


def storage_keywords(config_value: Mapping[str, Any]) -> dict[str, Any]:
    """Return the constructor keywords of a patient storage from its configuration."""
    return {
        "postgres_url": pg_url_from_config(config_value),
        "should_autocreate_tables": config_value.get("should_autocreate_tables", True),
        "token_provider": get_token_provider_from_config(config_value),
        "connect_retry_seconds": config_value.get("connect_retry_seconds", DEFAULT_RETRY_SECONDS),
    }


@contextmanager
def patient_connection(engine: Engine, seconds: float, what: str) -> Iterator[Connection]:
    """Open a connection of a storage engine, retried through a short outage, and close it after."""
    connection = retry_connection(engine.connect, seconds, what)
    try:
        yield connection
    finally:
        connection.close()


class PatientConfig:
    """What the patient storages add to ``dagster_postgres``'s: ``connect_retry_seconds``, read from config."""

    def __init__(self, *args: Any, connect_retry_seconds: float = DEFAULT_RETRY_SECONDS, **kwargs: Any) -> None:
        self.connect_retry_seconds = connect_retry_seconds
        super().__init__(*args, **kwargs)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        """Return ``dagster_postgres``'s schema with ``connect_retry_seconds``."""
        return patient_config()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]):
        """Make the storage from its ``dagster.yaml`` configuration."""
        return cls(inst_data=inst_data, **storage_keywords(config_value))


class PatientEventLogStorage(PatientConfig, PostgresEventLogStorage):
    """``PostgresEventLogStorage`` whose connections wait out short outages."""

    def _connect(self):
        return patient_connection(self._engine, self.connect_retry_seconds, "Dagster event log")


class PatientRunStorage(PatientConfig, PostgresRunStorage):
    """``PostgresRunStorage`` whose connections wait out short outages."""

    def connect(self):
        """Open a connection, retried through a short outage."""
        return patient_connection(self._engine, self.connect_retry_seconds, "Dagster run storage")


class PatientScheduleStorage(PatientConfig, PostgresScheduleStorage):
    """``PostgresScheduleStorage`` whose connections wait out short outages."""

    def connect(self, run_id: str | None = None):
        """Open a connection, retried through a short outage."""
        return patient_connection(self._engine, self.connect_retry_seconds, "Dagster schedule storage")


class PatientPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` made of the patient storages (``storage: custom:`` in ``dagster.yaml``)."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
        connect_retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        keywords = {
            "postgres_url": postgres_url,
            "should_autocreate_tables": should_autocreate_tables,
            "token_provider": token_provider,
            "connect_retry_seconds": connect_retry_seconds,
        }
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PatientRunStorage(**keywords)
        self._event_log_storage = PatientEventLogStorage(**keywords)
        self._schedule_storage = PatientScheduleStorage(**keywords)
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        """Return ``dagster_postgres``'s schema with ``connect_retry_seconds``."""
        return patient_config()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]):
        """Make the storage from its ``dagster.yaml`` configuration."""
        return cls(inst_data=inst_data, **storage_keywords(config_value))

    def _data(self, name: str) -> ConfigurableClassData | None:
        return ConfigurableClassData(MODULE, name, self.inst_data.config_yaml) if self.inst_data else None

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        """The event log storage a run worker makes: the patient one."""
        return self._data("PatientEventLogStorage")

    @property
    def run_storage_data(self) -> ConfigurableClassData | None:
        """The run storage a run worker makes: the patient one."""
        return self._data("PatientRunStorage")

    @property
    def schedule_storage_data(self) -> ConfigurableClassData | None:
        """The schedule storage a run worker makes: the patient one."""
        return self._data("PatientScheduleStorage")
