"""`cardflow histories record`: run the scenarios on a throwaway stack and write
their workflow histories to tests/histories/, for the replay test.

The throwaway stack uses the recording key of tests/histories/encryption-keys
(test data, protecting nothing), so the replay test can decode the payloads
with the production data converter.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from starters.devstack.processes import free_port
from starters.devstack.stack import Stack
from starters.scenarios import SCENARIOS
from workers.client import connect
from workers.settings import load_settings

RECORDING_KEYS_FILENAME = "encryption-keys"
_PORT_VARIABLES = (
    "CARDFLOW_TEMPORAL_PORT",
    "CARDFLOW_TEMPORAL_UI_PORT",
    "CARDFLOW_POSTGRES_PORT",
    "CARDFLOW_CODEC_PORT",
    "CARDFLOW_SIMULATORS_PORT",
    "CARDFLOW_GATEWAY_PORT",
)
_INHERITED_OVERRIDES = (
    "TEMPORAL_ADDRESS",
    "DATABASE_URL",
    "CARDFLOW_PROVIDERS_URL",
    "CARDFLOW_GATEWAY_URL",
    "CARDFLOW_WEBHOOK_SECRETS",
    "CARDFLOW_TASK_QUEUE_PREFIX",
    "TEMPORAL_NAMESPACE",
)


def record(out_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Run the named scenarios (all by default); return the history files written."""
    unknown = sorted(set(names or []) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")
    keys = (out_dir / RECORDING_KEYS_FILENAME).read_text().strip()
    home = Path(tempfile.mkdtemp(prefix="cardflow-recording-"))
    home.chmod(0o755)
    saved = {
        name: os.environ.get(name)
        for name in (
            *_PORT_VARIABLES,
            *_INHERITED_OVERRIDES,
            "CARDFLOW_HOME",
            "CARDFLOW_ENCRYPTION_KEYS",
        )
    }
    try:
        for name in _INHERITED_OVERRIDES:
            os.environ.pop(name, None)
        os.environ.update({name: str(free_port()) for name in _PORT_VARIABLES})
        os.environ.update(CARDFLOW_HOME=str(home), CARDFLOW_ENCRYPTION_KEYS=keys)
        settings = load_settings()
        stack = Stack(settings)
        stack.up()
        try:
            return asyncio.run(_run(settings, out_dir, names or list(SCENARIOS)))
        finally:
            stack.down()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(home, ignore_errors=True)


async def _run(settings, out_dir: Path, names: list[str]) -> list[Path]:  # type: ignore[no-untyped-def]
    client = await connect(settings)
    written: list[Path] = []
    for name in names:
        ran = await SCENARIOS[name](client, settings)
        workflow_ids = [ran] if isinstance(ran, str) else ran
        for index, workflow_id in enumerate(workflow_ids):
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            path = out_dir / (f"{name}.json" if index == 0 else f"{name}-{index + 1}.json")
            document = json.loads(history.to_json())
            path.write_text(json.dumps({"workflow_id": workflow_id, "history": document}, indent=1))
            written.append(path)
    return written


# ----- `cardflow histories ...` -----------------------------------------------

histories_app = typer.Typer(help="Recorded workflow histories.", no_args_is_help=True)


@histories_app.command("record")
def histories_record(
    out: Annotated[str, typer.Option(help="Directory of the histories")] = "tests/histories",
    only: Annotated[list[str] | None, typer.Option(help="Scenario name (repeatable)")] = None,
) -> None:
    """Run the scenarios on a throwaway stack and write their histories."""
    for path in record(Path(out), only):
        typer.echo(f"wrote {path}")
