"""Type stubs for piston._loop."""
import asyncio
from typing import Optional

from piston._piston import LoopCore

class Loop(LoopCore, asyncio.AbstractEventLoop):
    def set_watchdog(self, threshold: Optional[float]) -> None: ...
    def get_watchdog(self) -> Optional[float]: ...

def new_event_loop() -> Loop: ...
