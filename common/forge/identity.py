"""The repository a webhook is about, taken once from its body.

A body names its repository twice: `repository.full_name` and `repository.owner.login` +
`repository.name`. One integration once chose the webhook secret by the first and built the
run's repository from the second, so a body signed with repository B's secret naming B in
`full_name` and A in `owner`/`name` started a trusted run of A. `repository_identity` reads
both, refuses a body where they disagree, and returns the one identity that then decides the
secret (Forgejo/Gitea), the installation's scope (GitHub) and the run's `Repo`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.forge.errors import WebhookRejected

_HINT = "the forge sends one repository; was the body altered on the way?"


@dataclass(frozen=True)
class RepositoryIdentity:
    """`owner/name` of the repository a webhook is about."""

    owner: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


def _part(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise WebhookRejected(400, f"{where} must be a non-empty name without '/'", hint=_HINT)
    return value


def repository_identity(payload: Any) -> RepositoryIdentity | None:
    """The identity of `payload["repository"]`; None when the body names no repository.

    Raises `WebhookRejected` (400) when `full_name` is not exactly `owner.login/name`, or when
    one of them is missing or malformed.
    """
    if not isinstance(payload, dict) or payload.get("repository") is None:
        return None
    repository = payload["repository"]
    if not isinstance(repository, dict):
        raise WebhookRejected(400, "repository must be an object", hint=_HINT)
    owner = repository.get("owner")
    identity = RepositoryIdentity(
        _part(owner.get("login") if isinstance(owner, dict) else None, "repository.owner.login"),
        _part(repository.get("name"), "repository.name"))
    full_name = repository.get("full_name")
    if full_name != identity.full_name:
        raise WebhookRejected(400, f"repository.full_name {full_name!r} disagrees with "
                                   f"repository.owner.login/name {identity.full_name!r}", hint=_HINT)
    return identity
