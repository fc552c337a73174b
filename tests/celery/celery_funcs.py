"""Functions the tests ship to Celery workers (importable there through
PYTHONPATH) and ordinary Celery tasks for the TaskPool tests."""
import os
import time

from celery import shared_task


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def fail(msg):
    raise ValueError(msg)


def getpid():
    return os.getpid()


def sleep_then(seconds, value=None, pidfile=None):
    if pidfile:
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
    time.sleep(seconds)
    return value


def touch(path, value=None):
    with open(path, "a") as f:
        f.write("ran %d\n" % os.getpid())
    return value


def write_marker(path):
    """Called while *unpickling* a forged payload (see Marker.__reduce__):
    a file at path proves the payload was unpickled."""
    with open(path, "w") as f:
        f.write("unpickled in %d\n" % os.getpid())
    return path


class Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (write_marker, (self.path,))


def soft_limited(seconds):
    from celery.exceptions import SoftTimeLimitExceeded
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "soft limit caught"
    return "no limit"


def die(code):
    os._exit(code)


@shared_task(name="t.add")
def t_add(a, b):
    return a + b


@shared_task(name="t.sleep")
def t_sleep(seconds, value=None, pidfile=None):
    return sleep_then(seconds, value, pidfile)


@shared_task(name="t.pid")
def t_pid():
    return os.getpid()


@shared_task(name="t.soft", soft_time_limit=0.5)
def t_soft(seconds):
    return soft_limited(seconds)
