"""Git's smart HTTP protocol for the fake forges: `git http-backend` run as a CGI per request.

`GitHttp(root, private, reads)` is an ASGI app serving `/{owner}/{name}.git/...` from the bare
repository `root/owner/name.git`. A request is let in when it carries no credentials and
`private("owner/name")` is False, or when the password of its `Authorization: Basic` header is
a token that `reads(token, "owner/name")` (lower case); any user name, as both forges accept
a token as the password. A refused request gets 401 with `WWW-Authenticate: Basic` (git then
asks its credential helpers, finds none in a job, and fails), as both forges answer for a
private repository.
Every clone attempt is recorded in `attempts` as `(owner/name, username or None, allowed)`.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

Credentials = tuple[str, str] | None
_PATH = re.compile(r"^/(?P<owner>[^/]+)/(?P<name>[^/]+?)\.git(?P<rest>/.*)$")


def basic_credentials(header: str) -> Credentials:
    """`(username, password)` of an `Authorization: Basic ...` header value, else None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, password) if sep else None


class GitHttp:
    """Serves the bare repositories under `root`, each request allowed by `authorize`."""

    def __init__(self, root: Path, private: Callable[[str], bool],
                 reads: Callable[[str, str], bool]) -> None:
        self.root = root
        self.private = private
        self.reads = reads
        self.attempts: list[tuple[str, str | None, bool]] = []

    def matches(self, path: str) -> bool:
        return _PATH.match(path) is not None

    async def handle(self, request: Request) -> Response:
        match = _PATH.match(request.url.path)
        if match is None or not (self.root / match["owner"] / f"{match['name']}.git").is_dir():
            return Response("Not Found", 404)
        credentials = basic_credentials(request.headers.get("authorization", ""))
        key = f"{match['owner']}/{match['name']}".lower()
        allowed = (self.reads(credentials[1], key) if credentials is not None
                   else not self.private(key))
        self.attempts.append((f"{match['owner']}/{match['name']}",
                              credentials[0] if credentials else None, allowed))
        if not allowed:
            return Response("Unauthorized", 401, headers={"WWW-Authenticate": 'Basic realm="git"'})
        body = await request.body()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": f"/{match['owner']}/{match['name']}.git{match['rest']}",
               "REQUEST_METHOD": request.method, "QUERY_STRING": request.url.query,
               "CONTENT_TYPE": request.headers.get("content-type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": credentials[0] if credentials else "",
               "REMOTE_ADDR": "127.0.0.1", "GIT_CONFIG_NOSYSTEM": "1"}
        for header in ("git-protocol", "content-encoding"):
            if header in request.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = request.headers[header]
        process = await asyncio.create_subprocess_exec(
            "git", "http-backend", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await process.communicate(body)
        head, _, content = out.partition(b"\r\n\r\n")
        if not _:
            head, _, content = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        if process.returncode and not out:
            return Response(err.decode(errors="replace"), 500)
        return Response(content, status, headers=headers)
