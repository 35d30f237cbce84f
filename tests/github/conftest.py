"""Fixtures of the GitHub App tests: an App key pair and the fake GitHub API serving it."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from common.messages import Repo
from github_integration.api import GitHubApi, make_http_client
from github_integration.auth import AppAuth
from tests.fakes.github_api import FakeGitHub

APP_ID = 4242
INSTALLATION = 77
OWNER, REPO = "Codertocat", "Hello-World"
REPOSITORY = Repo(forge="github", owner=OWNER, name=REPO,
                  clone_url=f"https://github.com/{OWNER}/{REPO}.git",
                  installation_id=INSTALLATION)


class Clock:
    """A clock both the fake and the App read, moved by tests instead of sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake_github(app_key: rsa.RSAPrivateKey, clock: Clock) -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub(APP_ID, app_key.public_key(), clock=clock) as fake:
        fake.add_repo(OWNER, REPO, installation_ids={INSTALLATION})
        yield fake


@pytest.fixture
async def http(fake_github: FakeGitHub) -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(fake_github.url, timeout=2.0) as client:
        yield client


@pytest.fixture
def app_auth(app_key: rsa.RSAPrivateKey, http: httpx.AsyncClient, clock: Clock) -> AppAuth:
    return AppAuth(APP_ID, app_key, http, clock=clock)


@pytest.fixture
def github_api(http: httpx.AsyncClient, app_auth: AppAuth) -> GitHubApi:
    return GitHubApi(http, app_auth)
