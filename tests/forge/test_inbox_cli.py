"""`solstice-forge-integration inbox` and `solstice-github-integration inbox`, run as an
operator runs them (a subprocess on the integration's database)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg

from common.forge.inbox import Inbox, InboxState, Received


def inbox_command(module: str, pg_dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    return subprocess.run([sys.executable, "-m", f"{module}.main", "inbox", "--database-url",
                           pg_dsn, *args], capture_output=True, text=True, env=env, timeout=60)


async def park(inbox: Inbox, received: Received, error: str) -> int:
    await inbox.store(received, InboxState.PENDING)
    [item] = await inbox.claim([received.forge], limit=1, lease=60)
    await inbox.park(item, error)
    return item.id


async def test_operators_list_the_backlog_and_retry_a_parked_delivery(
        pool: asyncpg.Pool, pg_dsn: str) -> None:
    inbox = Inbox(pool)
    parked = await park(inbox, Received("forgejo", "d-parked", "push", b"{}"),
                        "ForgeApiError: forgejo reading .solstice/workflow.kdl: HTTP 502")
    await inbox.store(Received("gitea", "d-waiting", "pull_request", b"{}"), InboxState.PENDING)
    await inbox.store(Received("forgejo", "d-ignored", "create", b"{}"), InboxState.IGNORED, "x")
    github_parked = await park(inbox, Received("github", "d-gh", "push", b"{}"), "not installed")

    listed = inbox_command("forge_integration", pg_dsn)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "pending 1  done 0  ignored 1  rejected 0  parked 1"
    assert [line.split()[2] for line in lines[2:]] == ["d-parked", "d-waiting"]
    assert "HTTP 502" in lines[2] and "d-gh" not in listed.stdout

    only_parked = inbox_command("forge_integration", pg_dsn, "--parked", "--json")
    [row] = [json.loads(line) for line in only_parked.stdout.splitlines()]
    assert (row["id"], row["state"], row["attempts"]) == (parked, "parked", 1)
    assert row["last_error"].endswith("HTTP 502")

    github = inbox_command("github_integration", pg_dsn, "--parked", "--json")
    assert [json.loads(line)["delivery_id"] for line in github.stdout.splitlines()] == ["d-gh"]
    # Another integration's delivery is not this one's to retry.
    refused = inbox_command("forge_integration", pg_dsn, "--retry", str(github_parked))
    assert refused.returncode == 1 and "no parked delivery" in refused.stdout

    retried = inbox_command("forge_integration", pg_dsn, "--retry", str(parked))
    assert retried.returncode == 0, retried.stderr + retried.stdout
    entry = await inbox.find("forgejo", "d-parked")
    assert entry is not None and (entry.state, entry.attempts) == (InboxState.PENDING, 0)
    assert inbox_command("forge_integration", pg_dsn, "--retry", str(parked)).returncode == 1

