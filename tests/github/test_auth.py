"""App JWT and installation tokens against the fake GitHub: claims, caching, refresh."""
from __future__ import annotations

import asyncio

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.errors import ConfigError
from github_integration.api import GitHubApi, make_http_client
from github_integration.auth import AppAuth, load_private_key
from github_integration.errors import GitHubApiError
from tests.fakes.github_api import FakeGitHub
from tests.github.conftest import APP_ID, INSTALLATION, OWNER, REPO, REPOSITORY, Clock

FULL_NAME = f"{OWNER}/{REPO}"


def test_jwt_claims_follow_githubs_rules(app_auth: AppAuth, app_key: rsa.RSAPrivateKey,
                                         clock: Clock) -> None:
    token = app_auth.app_jwt()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, app_key.public_key(), algorithms=["RS256"],
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == str(APP_ID)
    assert claims["iat"] == int(clock.now) - 60
    assert claims["exp"] - claims["iat"] <= 600
    assert claims["exp"] <= clock.now + 600


async def test_token_is_cached_until_near_expiry(app_auth: AppAuth, fake_github: FakeGitHub,
                                                 clock: Clock) -> None:
    first = await app_auth.installation_token(INSTALLATION, FULL_NAME)
    clock.now += 50 * 60  # 10 minutes left: more than the 5-minute margin
    assert await app_auth.installation_token(INSTALLATION, FULL_NAME) == first
    assert fake_github.tokens_issued == 1
    clock.now += 6 * 60  # 4 minutes left: inside the margin, refresh
    second = await app_auth.installation_token(INSTALLATION, FULL_NAME)
    assert second != first
    assert fake_github.tokens_issued == 2


async def test_refresh_respects_expires_at(app_key: rsa.RSAPrivateKey, fake_github: FakeGitHub,
                                           http, clock: Clock) -> None:
    fake_github.token_lifetime = 400  # GitHub decides the lifetime; the App reads expires_at
    auth = AppAuth(APP_ID, app_key, http, clock=clock)
    first = await auth.installation_token(INSTALLATION, FULL_NAME)
    clock.now += 120  # 280 s left < 300 s margin
    assert await auth.installation_token(INSTALLATION, FULL_NAME) != first


async def test_concurrent_callers_share_one_mint(app_auth: AppAuth,
                                                 fake_github: FakeGitHub) -> None:
    tokens = await asyncio.gather(*(app_auth.installation_token(INSTALLATION, FULL_NAME) for _ in range(10)))
    assert len(set(tokens)) == 1
    assert fake_github.tokens_issued == 1


async def test_revoked_token_is_replaced_once(github_api: GitHubApi, fake_github: FakeGitHub) -> None:
    fake_github.repos[f"{OWNER}/{REPO}".lower()].files[("abc", "x.txt")] = "hi"
    await github_api.fetch_file(REPOSITORY, "x.txt", "abc")
    fake_github.tokens.clear()  # GitHub forgot every token (revoked)
    assert await github_api.fetch_file(REPOSITORY, "x.txt", "abc") == "hi"
    assert fake_github.tokens_issued == 2


async def test_wrong_key_is_refused(http, fake_github: FakeGitHub, clock: Clock) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = AppAuth(APP_ID, other, http, clock=clock)
    with pytest.raises(GitHubApiError) as caught:
        await auth.installation_token(INSTALLATION, FULL_NAME)
    assert caught.value.status == 401
    assert "private key" in str(caught.value)


async def test_app_clock_far_behind_is_refused(app_key, http, fake_github: FakeGitHub) -> None:
    auth = AppAuth(APP_ID, app_key, http, clock=lambda: fake_github.clock() - 3600)
    with pytest.raises(GitHubApiError) as caught:
        await auth.installation_token(INSTALLATION, FULL_NAME)
    assert caught.value.status == 401


async def test_unknown_installation_is_not_retryable(app_auth: AppAuth,
                                                     fake_github: FakeGitHub) -> None:
    with pytest.raises(GitHubApiError) as caught:
        await app_auth.installation_token(999, FULL_NAME)
    assert caught.value.status == 404 and not caught.value.retryable


async def test_server_error_and_timeout_are_retryable(app_key, fake_github: FakeGitHub,
                                                      clock: Clock) -> None:
    async with make_http_client(fake_github.url, timeout=0.3) as http:
        auth = AppAuth(APP_ID, app_key, http, clock=clock)
        fake_github.fail(1, status=502)
        with pytest.raises(GitHubApiError) as caught:
            await auth.installation_token(INSTALLATION, FULL_NAME)
        assert caught.value.retryable and caught.value.status == 502
        fake_github.fail(1, status=0, delay=2.0)
        with pytest.raises(GitHubApiError) as caught:
            await auth.installation_token(INSTALLATION, FULL_NAME)
        assert caught.value.retryable and caught.value.status == 0
        assert await auth.installation_token(INSTALLATION, FULL_NAME)


async def test_repo_installation_lookup(github_api: GitHubApi, fake_github: FakeGitHub) -> None:
    assert await github_api.repo_installation(OWNER, REPO) == INSTALLATION
    with pytest.raises(GitHubApiError) as caught:
        await github_api.repo_installation(OWNER, "not-installed")
    assert caught.value.not_found


def test_private_key_loading() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    assert load_private_key(pem).key_size == 2048
    with pytest.raises(ConfigError, match="not a readable PEM"):
        load_private_key("-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n")
