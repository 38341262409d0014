"""`cardflow status <workflow id>`: any process's state, as Temporal sees it
and as the process itself answers its `status` query."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import BaseModel

from starters import console
from workflows.catalog import STATUS_QUERIES


def status_command(workflow_id: Annotated[str, typer.Argument()]) -> None:
    """A process's state: Temporal's view and the workflow's own status query."""
    from workers.client import connect

    async def run() -> None:
        client = await connect(console.settings())
        handle = client.get_workflow_handle(workflow_id)
        description = await handle.describe()
        status = description.status.name if description.status else "UNKNOWN"
        typer.echo(f"{workflow_id} ({description.workflow_type}): {status}")
        try:
            query = STATUS_QUERIES.get(description.workflow_type)
            if query is None:
                raise LookupError(f"{description.workflow_type} is not a process cardflow runs")
            answer = await handle.query(query)
            if isinstance(answer, BaseModel):
                answer = answer.model_dump(mode="json")
            typer.echo(json.dumps(answer, indent=2, default=str))
        except Exception as error:  # noqa: BLE001 - a closed or query-less process
            typer.echo(f"(no status query answer: {error})")

    console.run(run())
