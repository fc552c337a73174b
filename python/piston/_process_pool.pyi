"""Type stubs for piston.ProcessPoolExecutor."""
import concurrent.futures
import multiprocessing.context
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, TypeVar, Union

from piston._piston import Future

_T = TypeVar("_T")

class ProcessPoolExecutor(concurrent.futures.Executor):
    def __init__(self, max_workers: Optional[int] = ...,
                 mp_context: Union[None, str, multiprocessing.context.BaseContext] = ...,
                 initializer: Optional[Callable[..., object]] = ...,
                 initargs: Tuple[Any, ...] = ...,
                 max_tasks_per_child: Optional[int] = ..., *,
                 task_timeout: Optional[float] = ...,
                 cancel_running: bool = ...,
                 arena_size: Optional[int] = ...,
                 result_arena_size: Optional[int] = ...) -> None: ...
    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]: ...
    def submit_with_timeout(self, timeout: Optional[float], fn: Callable[..., _T], /,
                            *args: Any, **kwargs: Any) -> Future[_T]: ...
    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: Optional[float] = ..., chunksize: Optional[int] = ...,
            progress: bool = ...) -> Iterator[_T]: ...
    def shutdown(self, wait: bool = ..., *, cancel_futures: bool = ...) -> None: ...
    def terminate_workers(self) -> None: ...
    def kill_workers(self) -> None: ...
