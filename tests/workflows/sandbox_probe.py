"""A workflow that, like the card, runs outside the sandbox on the workers,
and asks the operating system for its working directory: the kind of call
the sandbox exists to catch."""

from __future__ import annotations

import os

from temporalio import workflow


@workflow.defn(name="AsksTheOperatingSystem", sandboxed=False)
class AsksTheOperatingSystem:
    @workflow.run
    async def run(self) -> bool:
        return bool(os.getcwd())
