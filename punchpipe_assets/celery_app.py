"""The Celery app ``punchpipe worker`` starts: dagster-celery's, configured like the executor, kept warm.

punchbowl (7-9 s, ~450 MB) is imported here, in the worker's main process before it forks its
pool, so every worker process has it from the start instead of paying for it on its first task.
"""

from __future__ import annotations

import os

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task

from punchpipe_assets.config import load_config
from punchpipe_assets.execution import CELERY_SETTINGS
from punchpipe_assets.offline import configure_offline

configure_offline(load_config().home)
import punchbowl.level1.flow  # noqa: E402, F401 - imported once per worker, before the fork

import punchpipe_assets.definitions  # noqa: E402, F401 - the code location the steps run in

_missing = [name for name in ("PUNCHPIPE_CELERY_BROKER", "PUNCHPIPE_CELERY_BACKEND") if not os.environ.get(name)]
if _missing:
    raise SystemExit(f"a punchpipe worker needs ${' and $'.join(_missing)} (the broker and result backend URLs)")
app = make_app({"broker": os.environ["PUNCHPIPE_CELERY_BROKER"], "backend": os.environ["PUNCHPIPE_CELERY_BACKEND"]})
app.conf.update(CELERY_SETTINGS)

execute_plan = create_task(app)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)
