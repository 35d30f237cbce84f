"""Who may administer an orchestrator: the admin token, resolved from the configuration, and
the gRPC interceptor that demands it on every call of the Admin listener.

No token configured is a refusal to start, unless the operator opted out explicitly
(`insecure_admin_no_auth`), which is accepted only with the Admin listener on a loopback
address (a development machine) and is logged loudly at every start.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from common.admin_auth import GENERATE_HINT, check_token, read_token_file
from common.errors import ConfigError
from orchestrator.config import OrchestratorConfig

log = logging.getLogger(__name__)

SET_TOKEN_HINT = (
    "set admin_token_file (or SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN_FILE / --admin-token-file) to"
    f" a file holding a random token; {GENERATE_HINT}. For a development machine only:"
    " --insecure-admin-no-auth with admin_listen on a loopback address")
CIADM_HINT = ("pass the orchestrator's admin token to ciadm: --token-file PATH, or"
              " SOLSTICE_ADMIN_TOKEN_FILE / SOLSTICE_ADMIN_TOKEN")


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) as (host without brackets, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{address!r} is not HOST:PORT", hint="e.g. 127.0.0.1:50552")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface only (never a wildcard)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _overlap(a: str, b: str) -> bool:
    """Whether two listen addresses would share a socket: same port on the same or a
    wildcard host (gRPC would let both bind with SO_REUSEPORT and split the connections)."""
    (host_a, port_a), (host_b, port_b) = split_address(a), split_address(b)
    wildcard = {"", "0.0.0.0", "::"}
    return port_a == port_b != 0 and (host_a == host_b or bool({host_a, host_b} & wildcard))


@dataclass(frozen=True)
class AdminAccess:
    """The token the Admin service and the web pages demand; None only with the opt-out."""

    token: str | None = field(repr=False)
    # The web pages' token: None when they are public (web_access = "public").
    web_token: str | None = field(repr=False)


def resolve_access(config: OrchestratorConfig) -> AdminAccess:
    """The admin token from `config` (reading `admin_token_file`), or a ConfigError saying
    what to set. Reads no network; safe to call before anything starts."""
    admin_host, _ = split_address(config.admin_listen)
    advertise = (config.grpc_advertise or "").rpartition("://")[2]  # `grpcs://host:port` too
    if _overlap(config.admin_listen, config.grpc_listen) or (
            advertise and _overlap(config.admin_listen, advertise)):
        raise ConfigError(f"admin_listen ({config.admin_listen}) is the Runner service's address",
                          hint="job machines reach the Runner port: give the Admin service a "
                               "port of its own on a loopback address, e.g. 127.0.0.1:50552")
    given = config.admin_token is not None, config.admin_token_file is not None
    if all(given):
        raise ConfigError("both admin_token and admin_token_file are set",
                          hint="keep one (admin_token_file keeps the token out of the config)")
    if config.insecure_admin_no_auth:
        if any(given):
            raise ConfigError("insecure_admin_no_auth is set together with an admin token",
                              hint="drop insecure_admin_no_auth to require the token")
        if not is_loopback(admin_host):
            raise ConfigError(
                f"insecure_admin_no_auth is refused with admin_listen {config.admin_listen}: "
                "anyone who reaches that address could approve and cancel runs and read logs",
                hint="bind admin_listen to 127.0.0.1, or configure an admin token instead")
        if config.web_listen and config.web_access == "token":
            raise ConfigError("web_access = \"token\" needs an admin token, and admin "
                              "authentication is switched off",
                              hint="configure an admin token, or set web_access = \"public\" "
                                   "(every job's log readable by anyone reaching web_listen)")
        return AdminAccess(token=None, web_token=None)
    if config.admin_token is not None:
        token = check_token(config.admin_token.get_secret_value().strip(), "admin_token")
    elif config.admin_token_file is not None:
        token = check_token(read_token_file(config.admin_token_file),
                            str(config.admin_token_file))
    else:
        raise ConfigError("no admin token is configured, and the Admin service (approve, "
                          "cancel, logs) is never served without one", hint=SET_TOKEN_HINT)
    return AdminAccess(token=token, web_token=token if config.web_access == "token" else None)


def warn_about(config: OrchestratorConfig, access: AdminAccess) -> None:
    """Log, at every start, each way this configuration exposes administration or logs."""
    if access.token is None:
        log.warning("ADMIN AUTHENTICATION IS OFF (insecure_admin_no_auth): anyone with a "
                    "shell on this machine can approve and cancel runs and read every log "
                    "through %s. Development only.", config.admin_listen)
    elif not is_loopback(split_address(config.admin_listen)[0]):
        log.warning("the Admin service listens on %s without TLS: the admin token crosses the "
                    "network in clear text; prefer a loopback address and an SSH tunnel",
                    config.admin_listen)
    if config.web_listen and access.web_token is None:
        log.warning("web pages are PUBLIC (web_access = \"public\"): every job's log is "
                    "readable by anyone who reaches %s", config.web_listen)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return given is not None and hmac.compare_digest(_digest(given), _digest(token))


class AdminTokenRequired(grpc.aio.ServerInterceptor):
    """Every call on the Admin listener must carry `authorization: Bearer <admin token>`;
    otherwise it ends UNAUTHENTICATED before any handler runs. A new RPC is covered without
    anyone remembering to check."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        header = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        given = header[len("Bearer "):] if isinstance(header, str) and \
            header.startswith("Bearer ") else None
        if token_matches(given, self._token):
            return handler
        message = ("wrong admin token" if given is not None
                   else "this call needs the admin token") + f"; {CIADM_HINT}"
        log.warning("admin call refused", extra={"method": handler_call_details.method,
                                                  "token": "wrong" if given else "missing"})
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            if getattr(handler, kind) is not None:
                return handler._replace(**{kind: _refusal(kind, message)})
        return None


def caller(context: grpc.aio.ServicerContext) -> str:
    """Who made an Admin call, as recorded with what it changed."""
    return context.peer() or "ciadm"


def _refusal(kind: str, message: str) -> Callable[..., Any]:
    if kind.endswith("_stream"):  # the server iterates a streaming reply: a generator
        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover  (abort raises)

        return refuse_stream

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return refuse
