"""Checkout tokens from the GitHub integration's internal endpoint, and what the fake GitHub lets
them do: read the one repository's git and contents until they expire, nothing else."""
from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette

from common.forge.credentials import PATH, REVOKE_PATH, credential_routes
from common.forge.webhook import webhook_app
from common.messages import Repo
from github_integration.api import GitHubApi, make_http_client
from github_integration.auth import AppAuth
from github_integration.checkout import CheckoutTokens
from tests.fakes.github_api import FakeGitHub
from tests.github.conftest import APP_ID, Clock

INTERNAL = "internal-token-0123456789"


def repo(name: str, *, installation_id: int | None = 5) -> Repo:
    return Repo(forge="github", owner="acme", name=name,
                clone_url=f"https://github.com/acme/{name}.git", installation_id=installation_id)


def bare_repo(root: Path, name: str) -> None:
    work = root / f"work-{name}"
    work.mkdir(parents=True)
    (work / "f").write_text("x\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "c"]):
        subprocess.run(["git", *args], cwd=work, check=True, env=env, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "acme" / f"{name}.git")],
                   check=True, capture_output=True)


async def ls_remote(url: str, password: str | None) -> int:
    """`git ls-remote` with `x-access-token:password` (as the runner sends it), its exit code."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    if password is not None:
        import base64
        basic = base64.b64encode(f"x-access-token:{password}".encode()).decode()
        env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
    process = await asyncio.create_subprocess_exec(
        "git", "ls-remote", url, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    return await process.wait()


@pytest.fixture
async def github(app_key, clock: Clock, tmp_path: Path) -> AsyncIterator[FakeGitHub]:
    bare_repo(tmp_path / "git", "app")
    bare_repo(tmp_path / "git", "other")
    async with FakeGitHub(APP_ID, app_key.public_key(), clock=clock,
                          git_root=tmp_path / "git") as fake:
        fake.add_repo("acme", "app", installation_ids={5}, private=True)
        fake.add_repo("acme", "other", installation_ids={5}, private=True)
        yield fake


@pytest.fixture
async def endpoint(github: FakeGitHub, app_key, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(github.url, timeout=2.0) as http:
        api = GitHubApi(http, AppAuth(APP_ID, app_key, http, clock=clock))
        tokens = CheckoutTokens(api)
        app: Starlette = webhook_app(credential_routes(SecretStr(INTERNAL), tokens.issue,
                                                       tokens.revoke))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://integration") as client:
            yield client


async def ask(client: httpx.AsyncClient, target: Repo, token: str = INTERNAL) -> httpx.Response:
    return await client.post(PATH, headers={"Authorization": f"Bearer {token}"},
                             json={"repo": target.model_dump(mode="json"),
                                   "job_id": str(uuid.uuid4())})


async def test_a_checkout_token_reads_its_repository_only_until_it_expires(
        endpoint: httpx.AsyncClient, github: FakeGitHub, clock: Clock) -> None:
    response = await ask(endpoint, repo("app"))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    credential = response.json()
    assert credential["username"] == "x-access-token" and credential["expires_at"]
    token = credential["password"]
    grant = github.grant_of(token)
    assert grant is not None and dict(grant.permissions) == {"contents": "read",
                                                             "metadata": "read"}
    app_url, other_url = f"{github.url}/acme/app.git", f"{github.url}/acme/other.git"
    assert await ls_remote(app_url, None) != 0  # private: no anonymous clone
    assert await ls_remote(app_url, token) == 0
    assert await ls_remote(other_url, token) != 0  # another repository of the installation
    check_run = await httpx.AsyncClient(base_url=github.url).post(
        "/repos/acme/app/check-runs", headers={"Authorization": f"token {token}"},
        json={"name": "x", "head_sha": "a" * 40})
    assert check_run.status_code == 403  # contents: read only
    clock.now += 3601  # GitHub's tokens live an hour
    assert await ls_remote(app_url, token) != 0


async def test_a_handed_back_token_is_revoked(endpoint: httpx.AsyncClient,
                                              github: FakeGitHub) -> None:
    credential = (await ask(endpoint, repo("app"))).json()
    assert await ls_remote(f"{github.url}/acme/app.git", credential["password"]) == 0
    handed_back = {"repo": repo("app").model_dump(mode="json"), "job_id": str(uuid.uuid4()),
                   "credential": credential}
    wrong = await endpoint.post(REVOKE_PATH, json=handed_back,
                                headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and github.revoked == []
    for _ in range(2):  # the second time the token is gone already: still 204
        response = await endpoint.post(REVOKE_PATH, json=handed_back,
                                       headers={"Authorization": f"Bearer {INTERNAL}"})
        assert response.status_code == 204
    assert github.revoked == [credential["password"]]
    assert await ls_remote(f"{github.url}/acme/app.git", credential["password"]) != 0


async def test_the_endpoint_demands_the_internal_token(endpoint: httpx.AsyncClient) -> None:
    assert (await ask(endpoint, repo("app"), token="wrong")).status_code == 401
    missing = await endpoint.post(PATH, json={"repo": repo("app").model_dump(mode="json"),
                                              "job_id": str(uuid.uuid4())})
    assert missing.status_code == 401
    malformed = await endpoint.post(PATH, headers={"Authorization": f"Bearer {INTERNAL}"},
                                    json={"repo": "acme/app"})
    assert malformed.status_code == 400


async def test_a_repository_the_installation_cannot_reach_gets_no_token(
        endpoint: httpx.AsyncClient, github: FakeGitHub) -> None:
    refused = await ask(endpoint, repo("elsewhere"))
    assert refused.status_code == 400 and "no access" in refused.json()["error"]
    looked_up = await ask(endpoint, repo("app", installation_id=None))
    assert looked_up.status_code == 200  # the installation is looked up for the repository
    forgejo = await ask(endpoint, repo("app").model_copy(update={"forge": "forgejo"}))
    assert forgejo.status_code == 400


async def test_disabled_without_an_internal_token(github: FakeGitHub, app_key,
                                                  clock: Clock) -> None:
    async with make_http_client(github.url, timeout=2.0) as http:
        api = GitHubApi(http, AppAuth(APP_ID, app_key, http, clock=clock))
        tokens = CheckoutTokens(api)
        app = webhook_app(credential_routes(None, tokens.issue, tokens.revoke))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://integration") as client:
            assert (await ask(client, repo("app"), token="anything")).status_code == 404


async def test_the_fake_refuses_permissions_beyond_the_installations(
        github: FakeGitHub, app_key, clock: Clock) -> None:
    github.installation_permissions[5] = {"metadata": "read", "checks": "write"}
    async with make_http_client(github.url, timeout=2.0) as http:
        auth = AppAuth(APP_ID, app_key, http, clock=clock)
        refused = await http.post("/app/installations/5/access_tokens", headers=auth.app_headers(),
                                  json={"repositories": ["app"],
                                        "permissions": {"contents": "read"}})
        narrower = await http.post("/app/installations/5/access_tokens",
                                   headers=auth.app_headers(),
                                   json={"repositories": ["app"],
                                         "permissions": {"checks": "read"}})
    assert refused.status_code == 422 and "not granted" in refused.json()["message"]
    assert narrower.status_code == 201
    assert narrower.json()["permissions"] == {"checks": "read", "metadata": "read"}
