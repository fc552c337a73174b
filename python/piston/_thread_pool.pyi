"""Type stubs for piston.ThreadPoolExecutor."""
import concurrent.futures
from typing import Any, Callable, Iterable, Optional, Tuple

from piston._piston import ThreadPool

class ThreadPoolExecutor(ThreadPool, concurrent.futures.ThreadPoolExecutor):
    def __init__(self, max_workers: Optional[int] = ..., thread_name_prefix: str = ...,
                 initializer: Optional[Callable[..., object]] = ...,
                 initargs: Tuple[Any, ...] = ...) -> None: ...
    def shutdown(self, wait: bool = ..., *, cancel_futures: bool = ...) -> None: ...
