"""`ciadm submit`: a run asked for by an operator, through the same intake path as a forge's.

The Admin service builds a `RunRequest` (event `manual`, trusted: the operator holds the admin
token) and publishes it to the broker, where any orchestrator's intake takes it exactly as it
takes the integrations' requests; then it waits for the run to be recorded. That works in both
modes: a standalone orchestrator consumes its in-process queue too.

The workflow text comes with the request: `ciadm` reads it at the commit from a local clone
(`git show COMMIT:PATH`) or from `--workflow-file`. The orchestrator does not fetch
repositories itself, so it needs no credentials for them and an operator can try a workflow
before pushing it. Runs submitted this way name the forge `local`: no forge status is sent.
The clone URL must be one the job machines can fetch from (a `file://` path serves the local
backend, which copies that tree). The run is trusted: the admin token is the right to
run anything with the configured secrets.
"""
from __future__ import annotations

import asyncio
import re
import uuid

from common.broker import Broker
from common.messages import EventKind, Repo, RunRequest
from orchestrator.db import Database
from orchestrator.validate import InvalidMessage
from protos import admin_pb2

DEFAULT_WORKFLOW_PATH = ".solstice/workflow.kdl"
COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
MAX_FIELD_CHARS = 2048
# How long SubmitRun waits for an intake to record the run it published.
RECORD_TIMEOUT = 30.0
POLL_SECONDS = 0.1


def _text(field: str, value: str, *, required: bool = True) -> str:
    if required and not value:
        raise InvalidMessage(f"{field}: required")
    if len(value) > MAX_FIELD_CHARS or "\x00" in value:
        raise InvalidMessage(f"{field}: at most {MAX_FIELD_CHARS} characters, no NUL")
    return value


def run_request(message: admin_pb2.SubmitRunRequest) -> RunRequest:
    """The RunRequest for `message`; `InvalidMessage` saying which field is wrong."""
    for field in ("owner", "name"):
        if not NAME.match(getattr(message, field)):
            raise InvalidMessage(f"{field}: 1 to 100 letters, digits, '_', '.' or '-'")
    if not COMMIT.match(message.commit_sha):
        raise InvalidMessage("commit_sha: the full commit id (40 or 64 lower-case hex digits)")
    ref = _text("ref", message.ref)
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None
    if not (branch or tag):
        raise InvalidMessage("ref: refs/heads/BRANCH or refs/tags/TAG")
    if not message.workflow_source.strip():
        raise InvalidMessage("workflow_source: the workflow's text is empty")
    return RunRequest(
        request_id=_text("request_id", message.request_id, required=False) or str(uuid.uuid4()),
        repo=Repo(forge="local", owner=message.owner, name=message.name,
                  clone_url=_text("clone_url", message.clone_url)),
        commit_sha=message.commit_sha, ref=ref, event=EventKind.MANUAL, branch=branch, tag=tag,
        workflow_path=_text("workflow_path", message.workflow_path, required=False)
        or DEFAULT_WORKFLOW_PATH,
        workflow_source=message.workflow_source, trusted=True)


async def submit(db: Database, broker: Broker, request: RunRequest,
                 timeout: float = RECORD_TIMEOUT) -> uuid.UUID:
    """Publish `request` and return the id of the run an intake recorded for it; TimeoutError
    when none did within `timeout` seconds (no orchestrator consumes the runs queue)."""
    await broker.publish_run(request)
    async with asyncio.timeout(timeout):
        while True:
            run_id = await db.pool.fetchval("SELECT id FROM runs WHERE request_id = $1",
                                            request.request_id)
            if run_id is not None:
                return run_id
            await asyncio.sleep(POLL_SECONDS)
