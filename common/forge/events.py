"""What both integrations' `events` modules share: the outcomes of a delivery and the parsing
of the fields they model.

- `Ignored(reason)`: nothing to do (an event that starts no run, a workflow whose `on` does
  not match, no workflow file); the delivery is recorded with the reason;
- `Published(request)`: the broker confirmed the run request;
- `parse_model` validates a body against a pydantic model and turns the first problem into a
  400 naming the field; `named` insists on the repository the body must name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from common.forge.errors import WebhookRejected
from common.forge.identity import RepositoryIdentity
from common.messages import RunRequest


@dataclass(frozen=True)
class Ignored:
    """Nothing to run; answered 200 (or recorded by the inbox) with `reason`."""

    reason: str


@dataclass(frozen=True)
class Published:
    """The broker confirmed this run request."""

    request: RunRequest


@dataclass(frozen=True)
class ApprovalSent:
    """A maintainer's approval (button or `/solstice approve`) was published as a
    `RunApproval`; `reason` says what it approves."""

    reason: str


class Model(BaseModel):
    """A webhook body's part: only the fields used are modelled, the forges add more freely."""

    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=Model)


def parse_model(model: type[M], event: str, payload: dict[str, Any], forge: str) -> M:
    """`payload` as `model`, or a 400 naming the first field that is missing or wrong."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise WebhookRejected(400, f"malformed {event} payload: {where}: {first['msg']}",
                              hint=f"{forge} sends this field; was the body altered on the way?"
                              ) from exc


def named(identity: RepositoryIdentity | None, event: str) -> RepositoryIdentity:
    """The repository `event` must name, or a 400."""
    if identity is None:
        raise WebhookRejected(400, f"malformed {event} payload: repository: Field required")
    return identity


def sender_login(payload: dict[str, Any]) -> str | None:
    """The login of whoever's action the webhook reports (`sender`, both forges), for the run
    record; None when the body names none usable."""
    sender = payload.get("sender")
    login = sender.get("login") if isinstance(sender, dict) else None
    return login if isinstance(login, str) and 0 < len(login) <= 100 else None
