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
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from common.admin_auth import GENERATE_HINT, check_token, read_token_file
from common.errors import ConfigError
from common.postgres import TRANSIENT_ERRORS
from orchestrator import audit
from orchestrator.config import OrchestratorConfig
from orchestrator.grants import MIN_KEY_LENGTH, derive_key

log = logging.getLogger(__name__)

SET_TOKEN_HINT = (
    "set admin_token_file (or SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN_FILE / --admin-token-file) to"
    f" a file holding a random token; {GENERATE_HINT}. For a development machine only:"
    " --insecure-admin-no-auth with admin_listen on a loopback address")
NO_AUTH_CALLER = "insecure-no-auth"
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
    """The bootstrap admin token (None only with the opt-out), and the key the web pages' grants
    and sessions are signed with (None when the pages are public or not served)."""

    token: str | None = field(repr=False)
    web_key: bytes | None = field(repr=False)


def _web_key(config: OrchestratorConfig, token: str | None) -> bytes | None:
    """The web signing key: `web_grant_key_file`, else derived from the admin token."""
    if not config.web_listen or config.web_access == "public":
        return None
    if config.web_grant_key_file is not None:
        key = read_token_file(config.web_grant_key_file)
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"the web grant key in {config.web_grant_key_file} is too short "
                              f"({len(key)} characters; at least {MIN_KEY_LENGTH})",
                              hint=GENERATE_HINT.replace("admin-token", "web-grant-key"))
        return derive_key(key)
    if token is None:
        raise ConfigError(f"web_access = \"{config.web_access}\" signs its links and sessions "
                          "with the admin token or web_grant_key_file, and neither is set",
                          hint="set web_grant_key_file, or configure an admin token, or set "
                               "web_access = \"public\" (every job's log readable by anyone "
                               "reaching web_listen)")
    return derive_key(token)


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
        return AdminAccess(token=None, web_key=_web_key(config, None))
    if config.admin_token is not None:
        token = check_token(config.admin_token.get_secret_value().strip(), "admin_token")
    elif config.admin_token_file is not None:
        token = check_token(read_token_file(config.admin_token_file),
                            str(config.admin_token_file))
    else:
        raise ConfigError("no admin token is configured, and the Admin service (approve, "
                          "cancel, logs) is never served without one", hint=SET_TOKEN_HINT)
    return AdminAccess(token=token, web_key=_web_key(config, token))


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
    if config.web_listen and config.web_access == "public":
        log.warning("web pages are PUBLIC (web_access = \"public\"): every job's log is "
                    "readable by anyone who reaches %s", config.web_listen)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return given is not None and hmac.compare_digest(_digest(given), _digest(token))


# The name of the admin token the current Admin call presented ("bootstrap" for the configured
# one). Set by `AdminTokenRequired` in the call's own task, before its handler runs.
_caller: ContextVar[str] = ContextVar("admin_caller", default=NO_AUTH_CALLER)


def actor() -> str:
    """Who the current Admin call acts as, for the run and the audit log: `token:NAME`
    (`insecure-no-auth` under the development opt-out, where no token is presented)."""
    name = caller()
    return name if name == NO_AUTH_CALLER else audit.token_actor(name)


def caller() -> str:
    """The admin token name of the Admin call being handled (`NO_AUTH_CALLER` with the
    development opt-out, where calls present no token)."""
    return _caller.get()


class AdminTokenRequired(grpc.aio.ServerInterceptor):
    """Every call on the Admin listener must carry `authorization: Bearer <admin token>`, the
    bootstrap token or a named one (`identify` resolves it to its name, None if it is no valid
    token); otherwise it ends UNAUTHENTICATED before its handler runs. A new RPC is covered
    without anyone remembering to check. The handler learns the name from `caller()`."""

    def __init__(self, identify: Callable[[str], Awaitable[str | None]]) -> None:
        self._identify = identify

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        header = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        given = header[len("Bearer "):] if isinstance(header, str) and \
            header.startswith("Bearer ") else None
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                admit = self._admission(given, handler_call_details.method)
                return handler._replace(**{kind: _admitted(kind, behaviour, admit)})
        return None

    def _admission(self, given: str | None,
                   method: str) -> Callable[[grpc.aio.ServicerContext], Awaitable[None]]:
        async def admit(context: grpc.aio.ServicerContext) -> None:
            """Set `caller()` for this call, or end it."""
            try:
                name = await self._identify(given) if given else None
            except TRANSIENT_ERRORS:
                # Named tokens live in the database: say so rather than refuse a valid token.
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the orchestrator's database "
                                    "is unavailable, so the admin token cannot be checked; retry")
            if name is None:
                log.warning("admin call refused", extra={"method": method,
                                                          "token": "wrong" if given else "missing"})
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    ("wrong admin token" if given is not None
                                     else "this call needs the admin token") + f"; {CIADM_HINT}")
            _caller.set(name)

        return admit


def _admitted(kind: str, behaviour: Callable[..., Any],
              admit: Callable[[grpc.aio.ServicerContext], Awaitable[None]]) -> Callable[..., Any]:
    """`behaviour`, run only once `admit` let the call in (each call runs in a task of its own,
    so `caller()` does not leak into another call)."""
    if kind.endswith("_stream"):  # the server iterates a streaming reply: a generator
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            async for reply in behaviour(request, context):
                yield reply

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context)
        return await behaviour(request, context)

    return unary
