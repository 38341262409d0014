"""The garbage collector on a serving process.

A full collection walks every object the process holds, and the process
serves nothing while it does. On a process that has just started, most of
them are its code and its app (modules, routes, models, the workflow
sandbox's restrictions), which live as long as it does: `freeze_startup`
moves them out of the collector's view once the process is ready, so a full
collection walks only what serving made, and its pause, which lands on
whichever real-time authorization is in flight, stays short.
"""

from __future__ import annotations

import gc


def freeze_startup() -> None:
    """Collect what starting left behind, then keep the rest out of every
    later collection (gc.freeze)."""
    gc.collect()
    gc.freeze()
