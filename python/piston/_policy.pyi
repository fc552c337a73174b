"""Type stubs for piston._policy."""
import asyncio
from typing import Any, Coroutine, Optional, TypeVar

_T = TypeVar("_T")

def run(main: Coroutine[Any, Any, _T], *, debug: Optional[bool] = ...,
        watchdog: Optional[float] = ...) -> _T: ...
def install() -> None: ...

class EventLoopPolicy(asyncio.AbstractEventLoopPolicy): ...
