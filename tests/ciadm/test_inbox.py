"""`ciadm inbox`: the real CLI against a real orchestrator, which asks a real forge integration
(over HTTP, its internal token) for its webhook inbox; the forge API is the fake Forgejo."""
from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from pydantic import SecretStr

from ciadm.main import build_parser
from common.broker import MemoryBroker
from common.forge.inbox import InboxState
from orchestrator import audit
from orchestrator.checkout_credentials import CredentialSource
from tests.ciadm.test_admin import ciadm
from tests.fakes.forgejo_api import FakeForgejo
from tests.forge.conftest import FAST_INBOX, broker, forge, make_config, pool, service_with  # noqa: F401
from tests.forge.test_webhooks import PUSH
from tests.orchestrator.test_checkout_credentials import closed_port

INTERNAL = "internal-token-0123456789"


async def test_operators_list_and_retry_a_parked_delivery(
        orchestrator_factory, forge: FakeForgejo, pool: asyncpg.Pool,  # noqa: F811
        broker: MemoryBroker) -> None:  # noqa: F811
    forge.fail(100, status=502, path_contains="/contents/")
    config = make_config(forge, internal_token=SecretStr(INTERNAL),
                         inbox=FAST_INBOX.model_copy(update={"max_attempts": 2}))
    async with service_with(config, forge, pool, broker) as h:
        assert (await h.post(PUSH, "push", delivery="d-park")).status_code == 202
        parked = await h.settled("d-park")
        assert parked.state is InboxState.PARKED
        url = str(h.http.base_url).rstrip("/")
        down = f"http://127.0.0.1:{closed_port()}"
        harness = await orchestrator_factory(checkout_credentials={
            "forgejo": CredentialSource(url=url, token=SecretStr(INTERNAL)),
            "gitea": CredentialSource(url=url + "/", token=SecretStr(INTERNAL)),
            "github": CredentialSource(url=down, token=SecretStr(INTERNAL), timeout=1.0)})

        # Independent asks, run side by side: each `ciadm` is a process of its own.
        listed, as_text, unknown, unreachable = await asyncio.gather(
            ciadm(harness, "inbox"), ciadm(harness, "inbox", "--parked", "--json"),
            ciadm(harness, "inbox", "--retry", "forgejo:999999"),
            ciadm(harness, "inbox", "--retry", "github:1"))
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        # One integration serving two forges is asked once; the one that is down is reported.
        assert lines[0] == (f"{url} (forgejo, gitea): pending 0  parked 1  done 0  ignored 0"
                            "  rejected 0")
        assert lines[1].split()[:2] == ["ID", "DELIVERY"]
        assert lines[2].split()[:5] == [f"forgejo:{parked.id}", "d-park", "push", "parked", "2"]
        assert "ForgeApiError: forgejo reading .solstice/workflow.kdl" in lines[2]
        assert lines[3].startswith(f"{down} (github): NO ANSWER:") and "no answer" in lines[3]

        as_json = json.loads(as_text.stdout)
        forgejo, github = as_json["integrations"]
        assert (forgejo["forges"], forgejo["error"]) == (["forgejo", "gitea"], "")
        assert forgejo["counts"]["parked"] == 1
        [delivery] = forgejo["deliveries"]
        assert (delivery["id"], delivery["delivery_id"], delivery["state"],
                delivery["attempts"]) == (str(parked.id), "d-park", "parked", 2)
        assert "HTTP 502" in delivery["last_error"]
        assert (github["url"], github["deliveries"]) == (down, []) and github["error"]

        assert unknown.returncode == 1 and "no parked delivery 999999" in unknown.stderr
        assert unreachable.returncode == 1 and "no answer" in unreachable.stderr

        forge.heal()
        retried = await ciadm(harness, "inbox", "--retry", f"forgejo:{parked.id}")
        assert retried.returncode == 0, retried.stderr
        assert f"delivery forgejo:{parked.id} (d-park, push) is pending again" in retried.stdout
        assert (await h.settled("d-park")).state is InboxState.DONE
        await h.wait_for(lambda: len(h.runs) == 1)

        entries = [(e.actor, e.target, e.outcome)
                   for e in await audit.recent(harness.orchestrator.db.pool)
                   if e.action == "inbox.retry"]
        assert entries[0] == ("token:bootstrap", f"forgejo:{parked.id}", "ok")
        assert sorted((target, outcome.split(":")[0]) for _, target, outcome in entries[1:]) == [
            ("forgejo:999999", "refused"), ("github:1", "refused")]


async def test_no_integration_configured_says_which_table_to_set(orchestrator_factory) -> None:
    harness = await orchestrator_factory()
    listed, retried = await asyncio.gather(ciadm(harness, "inbox"),
                                           ciadm(harness, "inbox", "--retry", "forgejo:1"))
    assert listed.returncode == 1
    assert "knows no forge integration" in listed.stderr
    assert "[orchestrator.checkout_credentials.<forge>]" in listed.stderr
    assert retried.returncode == 1 and "checkout_credentials" in retried.stderr


def test_retry_takes_forge_and_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["inbox", "--retry", "gitea:17"]).retry == ("gitea", 17)
    for malformed in ("17", "forgejo:", ":17", "forgejo:0", "forgejo:x"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["inbox", "--retry", malformed])
        assert exited.value.code == 2 and "FORGE:ID" in capsys.readouterr().err
