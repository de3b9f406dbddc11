"""The executor of every run, chosen by configuration (``execution.mode``): Dagster's own engines only.

Celery (dagster-celery) is configured for long, memory-heavy steps: a task is acknowledged when it
has finished, not on receipt (``task_acks_late``, and put back if its worker dies), a worker
reserves one task at a time (``worker_prefetch_multiplier`` 1, one process per worker), and each
step goes to the queue of its concurrency pool (``materialize.pool_kwargs``), so that
``punchbowl_large_memory`` steps reach only the workers started for them.
"""

from __future__ import annotations

import dagster as dg

from punchpipe_assets.config import ExecutionSettings

#: Settings of the Celery app that the executor and the workers share.
CELERY_SETTINGS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "worker_concurrency": 1,
    "task_create_missing_queues": True,
}


def celery_executor_config() -> dict:
    """Return the ``celery_executor`` configuration: broker and backend from the environment."""
    return {
        "broker": {"env": "PUNCHPIPE_CELERY_BROKER"},
        "backend": {"env": "PUNCHPIPE_CELERY_BACKEND"},
        "config_source": CELERY_SETTINGS,
    }


def executor_for(settings: ExecutionSettings) -> dg.ExecutorDefinition:
    """Return the Dagster executor of a configuration."""
    if settings.mode == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": settings.max_concurrent})
    if settings.mode == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_executor_config())
    return dg.in_process_executor
