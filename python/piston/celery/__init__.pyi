import concurrent.futures
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar, Union

from celery import Celery
from celery.concurrency.base import BasePool

import piston

_T = TypeVar("_T")

KEY_ENV: str
TASK_NAME: str

class PayloadRejected(Exception): ...

class RemoteTraceback(Exception):
    tb: str
    def __init__(self, tb: str) -> None: ...

def register(app: Celery, *, key: Union[str, bytes, None] = ...,
             reject_on_worker_lost: bool = ...) -> Any: ...

class CeleryExecutor(concurrent.futures.Executor):
    def __init__(self, app: Celery, queue: Optional[str] = ..., *,
                 key: Union[str, bytes, None] = ...,
                 time_limit: Optional[float] = ...,
                 soft_time_limit: Optional[float] = ...,
                 result_timeout: Optional[float] = ...,
                 poll_interval: float = ...,
                 chunksize: Optional[int] = ...) -> None: ...
    def submit(self, fn: Callable[..., _T], /, *args: Any,
               **kwargs: Any) -> piston.Future: ...
    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: Optional[float] = ...,
            chunksize: Optional[int] = ...) -> Iterator[_T]: ...
    def shutdown(self, wait: bool = ..., *,
                 cancel_futures: bool = ...) -> None: ...

class TaskPool(BasePool): ...
