"""Riding out short database outages: bounded connection retries with back-off (``tenacity``).

A PostgreSQL restart, a fail-over or a network blip of some seconds must not fail a run. Both the
catalog (``catalog.py``) and Dagster's own storage (``patient_storage.py``) open connections
through ``retry_connection``: connection errors are retried with exponential back-off and jitter
until a deadline, then raised. Errors that retrying cannot cure (bad password, unknown database)
are raised at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import tenacity

#: Environment variable: seconds the catalog keeps trying to connect during an outage.
CATALOG_RETRY_ENV = "PUNCHPIPE_CATALOG_CONNECT_RETRY_SECONDS"
#: Default of ``CATALOG_RETRY_ENV`` and of the Dagster storage's ``connect_retry_seconds``.
DEFAULT_RETRY_SECONDS = 120.0
#: Connection errors that waiting does not cure.
PERMANENT = ("authentication failed", "does not exist", "no password supplied")

logger = logging.getLogger("punchpipe.outages")


def catalog_retry_seconds() -> float:
    """Return how long the catalog retries a connection (``$PUNCHPIPE_CATALOG_CONNECT_RETRY_SECONDS``)."""
    return float(os.environ.get(CATALOG_RETRY_ENV, DEFAULT_RETRY_SECONDS))


def transient(error: BaseException) -> bool:
    """Return whether a connection error may pass with time (server down, restarting, unreachable)."""
    from psycopg2 import OperationalError as DriverOperationalError
    from sqlalchemy.exc import OperationalError, TimeoutError

    if not isinstance(error, OperationalError | TimeoutError | DriverOperationalError):
        return False
    message = str(error).lower()
    return not any(word in message for word in PERMANENT)


def retry_connection[T](connect: Callable[[], T], seconds: float, what: str) -> T:
    """Call ``connect`` until it succeeds, retrying transient errors for up to ``seconds``.

    Parameters
    ----------
    connect
        Opens a connection (a DB-API ``connect`` or ``Engine.connect``).
    seconds
        The deadline; 0 tries once.
    what
        What connects, for the warnings logged at each retry.

    Returns
    -------
    T
        The connection.

    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient),
        stop=tenacity.stop_after_delay(seconds),
        wait=tenacity.wait_exponential_jitter(initial=0.25, max=5.0, jitter=0.25),
        before_sleep=lambda state: logger.warning(
            "%s: database unreachable for %.1f s, retrying (%s)",
            what,
            state.seconds_since_start or 0.0,
            str(state.outcome.exception()).strip().splitlines()[0] if state.outcome else "",
        ),
        reraise=True,
    )
    return retrying(connect)
