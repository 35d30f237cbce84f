"""The status badge: a small SVG a README embeds (`/badge/OWNER/REPO.svg?branch=main`).

Badges are public even when the pages sit behind the token: a README's image is fetched by
the forge's image proxy, which has no token. They show only passing, failing, running or
unknown for one branch. `Cache-Control: max-age=60` keeps the proxies' copies fresh.
"""
from __future__ import annotations

import html
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from orchestrator.db import Database
from orchestrator.web.data import badge_state

COLOURS = {"passing": "#2da44e", "failing": "#cf222e", "running": "#bf8700",
           "unknown": "#8c959f"}
CACHE_SECONDS = 60
LABEL = "build"
CHAR_WIDTH = 7  # px per character of 11 px Verdana, near enough for short words


def render(state: str) -> str:
    """The badge's SVG for `state` (one of `COLOURS`)."""
    left, right = len(LABEL) * CHAR_WIDTH + 12, len(state) * CHAR_WIDTH + 12
    width = left + right
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img"'
        f' aria-label="{LABEL}: {state}"><title>{LABEL}: {state}</title>'
        f'<rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{COLOURS[state]}"/>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif"'
        f' font-size="11"><text x="{left / 2}" y="14">{LABEL}</text>'
        f'<text x="{left + right / 2}" y="14">{html.escape(state)}</text></g></svg>')


def badge_endpoint(db: Database) -> Callable[[Request], Awaitable[Response]]:
    """`GET /badge/{owner}/{repo}.svg`."""
    async def badge(request: Request) -> Response:
        state = await badge_state(db, request.path_params["owner"], request.path_params["repo"],
                                  request.query_params.get("branch"),
                                  request.query_params.get("workflow"))
        return Response(render(state), media_type="image/svg+xml",
                        headers={"Cache-Control": f"max-age={CACHE_SECONDS}"})
    return badge
