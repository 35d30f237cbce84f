"""Commands maintainers write in pull-request comments.

`/solstice approve` on a line of its own approves the pull request's runs that wait for a
maintainer; `/solstice approve SHA` (7 to 40 hex digits) only those of commits starting with
SHA, for a maintainer who wants to approve exactly the commit they read. Anything else in the
comment is ignored; a comment without the command is not a command.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_APPROVE = re.compile(r"^[ \t]*/solstice[ \t]+approve(?:[ \t]+(?P<sha>[0-9a-fA-F]{7,40}))?[ \t]*$",
                      re.MULTILINE)


@dataclass(frozen=True)
class Approve:
    """`/solstice approve [SHA]`; `commit_prefix` is SHA in lower case, empty when absent."""

    commit_prefix: str = ""


def parse_command(body: str) -> Approve | None:
    """The command a comment body holds, None when it holds none (the first one counts)."""
    match = _APPROVE.search(body.replace("\r\n", "\n"))
    if match is None:
        return None
    return Approve((match["sha"] or "").lower())
