"""The harnesses' event loop: uvloop where it is installed (a dependency on Linux), so that on a small machine the
client takes less of the CPU it shares with the server it measures."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        uvloop = None
    # Outside the except block, so that tracebacks are not chained to the ImportError.
    return asyncio.run(main) if uvloop is None else uvloop.run(main)
