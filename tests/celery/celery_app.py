"""The Celery app the test workers load with -A celery_app (and the test
process uses to submit): broker and backend from PISTON_TEST_REDIS_URL."""
import os

from celery import Celery

import piston.celery

URL = os.environ.get("PISTON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
VISIBILITY = float(os.environ.get("PISTON_TEST_VISIBILITY", "60"))

app = Celery("piston_test", broker=URL, backend=URL,
             include=["celery_funcs"])
app.conf.update(
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        # Messages of a dead worker come back after this many seconds; the
        # restore sweep runs every second so tests need not wait long.
        "visibility_timeout": VISIBILITY,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    result_expires=600,
    worker_hijack_root_logger=False,
    worker_pool_restarts=True,
)
piston.celery.register(app)
