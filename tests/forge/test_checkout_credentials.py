"""Checkout credentials from the Forgejo/Gitea integration: the repository's read token, else
its site's, else none (204), only for the orchestrators' bearer token."""
from __future__ import annotations

import uuid

import asyncpg
import httpx
from pydantic import SecretStr

from common.broker import MemoryBroker
from common.forge.credentials import PATH
from common.messages import Repo
from forge_integration.config import RepoSettings, Site
from tests.fakes.forgejo_api import FakeForgejo
from tests.forge.conftest import make_config, service_with

INTERNAL = "internal-token-0123456789"


async def ask(http: httpx.AsyncClient, forge: str, full_name: str,
              token: str = INTERNAL) -> httpx.Response:
    owner, name = full_name.split("/")
    repo = Repo(forge=forge, owner=owner, name=name, clone_url=f"https://f/{full_name}.git")
    return await http.post(PATH, headers={"Authorization": f"Bearer {token}"},
                           json={"repo": repo.model_dump(mode="json"), "job_id": str(uuid.uuid4())})


async def test_repository_token_else_site_token_else_none(
        forge: FakeForgejo, pool: asyncpg.Pool, broker: MemoryBroker) -> None:
    config = make_config(
        forge, internal_token=SecretStr(INTERNAL),
        sites={"forgejo": Site(url=forge.url, token=SecretStr(forge.token),
                               checkout_token=SecretStr("site-read-token"),
                               checkout_username="reader"),
               "gitea": Site(url=forge.url, token=SecretStr(forge.token))},
        repos={"Acme/Secret": RepoSettings(checkout_token=SecretStr("repo-read-token"),
                                           checkout_username="secret-reader")})
    async with service_with(config, forge, pool, broker) as h:
        own = await ask(h.http, "forgejo", "acme/secret")
        site = await ask(h.http, "forgejo", "acme/app")
        none = await ask(h.http, "gitea", "acme/app")
        wrong = await ask(h.http, "forgejo", "acme/app", token="not-it")
        github = await ask(h.http, "github", "acme/app")
    assert own.status_code == 200 and own.json() == {
        "username": "secret-reader", "password": "repo-read-token", "expires_at": None}
    assert site.json()["password"] == "site-read-token" and site.json()["username"] == "reader"
    assert none.status_code == 204 and none.content == b""
    assert wrong.status_code == 401 and "site-read-token" not in wrong.text
    assert github.status_code == 400


async def test_not_served_without_an_internal_token(forge: FakeForgejo, pool: asyncpg.Pool,
                                                    broker: MemoryBroker) -> None:
    async with service_with(make_config(forge), forge, pool, broker) as h:
        response = await ask(h.http, "forgejo", "acme/app", token="anything")
    assert response.status_code == 404
