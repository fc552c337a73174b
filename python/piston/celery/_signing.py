"""HMAC-SHA256 signing of the pickled payloads piston.celery ships through
a broker and a result backend; verification always happens before
unpickling."""
import base64
import binascii
import hashlib
import hmac
import os

__all__ = ["KEY_ENV", "MIN_KEY_BYTES", "PayloadRejected", "get_key",
           "sign", "verify"]

# The environment variable submitters and workers read the shared key from.
KEY_ENV = "PISTON_CELERY_KEY"
# 128 bits: shorter keys are refused rather than silently accepted.
MIN_KEY_BYTES = 16
# Bumped if the signed layout ever changes, so old signatures stop verifying.
_VERSION = b"piston.celery/1"


class PayloadRejected(Exception):
    """A message or result whose signature is missing or wrong; it was not
    unpickled.  Raised by workers (the task fails with it) and by the
    submitting side for a result that does not verify."""


def get_key(key=None, *, required=True):
    """The HMAC key as bytes: ``key`` if given (str is UTF-8 encoded), else
    the environment variable PISTON_CELERY_KEY.  Missing or shorter than
    16 bytes: ValueError if ``required``, else None."""
    if key is None:
        key = os.environ.get(KEY_ENV)
        where = "environment variable %s" % KEY_ENV
    else:
        where = "key argument"
    if key is None or key == "" or key == b"":
        if not required:
            return None
        raise ValueError(
            "piston.celery needs an HMAC key shared by submitters and "
            "workers: pass key=... or set the environment variable %s "
            "(at least %d bytes, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`)"
            % (KEY_ENV, MIN_KEY_BYTES))
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif isinstance(key, (bytearray, memoryview)):
        key = bytes(key)
    elif not isinstance(key, bytes):
        raise TypeError("the piston.celery key must be str or bytes, not %s"
                        % type(key).__name__)
    if len(key) < MIN_KEY_BYTES:
        if not required:
            return None
        raise ValueError("the piston.celery key from the %s is %d bytes; "
                         "at least %d are required"
                         % (where, len(key), MIN_KEY_BYTES))
    return key


def _mac(key, kind, task_id, payload):
    # Domain separation: a task signature never verifies as a result
    # signature, and neither verifies for another task id.  Lengths are
    # fixed-width so fields cannot slide into each other.
    tid = task_id.encode("utf-8")
    msg = b"".join((_VERSION, b"\0", kind, b"\0",
                    len(tid).to_bytes(4, "big"), tid, payload))
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(key, kind, task_id, payload):
    """(base64 text of payload, hex signature) for a JSON-safe message."""
    return (base64.b64encode(payload).decode("ascii"),
            _mac(key, kind, task_id, payload))


def verify(key, kind, task_id, data, signature):
    """The payload bytes of (data, signature) as made by sign(), or
    PayloadRejected if anything is missing, malformed or does not verify.
    Never unpickles."""
    if key is None:
        raise PayloadRejected("no piston.celery key is configured here (set "
                              "%s); refusing to unpickle" % KEY_ENV)
    if not isinstance(signature, str) or not signature:
        raise PayloadRejected("%s %s carries no signature; not unpickled"
                              % (kind.decode(), task_id))
    if not isinstance(data, str):
        raise PayloadRejected("%s %s carries no payload"
                              % (kind.decode(), task_id))
    try:
        payload = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise PayloadRejected("%s %s: payload is not base64; not unpickled"
                              % (kind.decode(), task_id)) from None
    expected = _mac(key, kind, task_id, payload)
    if not hmac.compare_digest(expected.encode("ascii"),
                               signature.encode("utf-8", "replace")):
        raise PayloadRejected("%s %s: wrong signature (forged, tampered "
                              "with, or signed with another key); not "
                              "unpickled" % (kind.decode(), task_id))
    return payload
