"""Where a secret applies: everywhere, to one forge owner's repositories, or to one repository.

Written `global`, `owner:ORG` or `repo:OWNER/NAME`. The owner and repository forms may name
the forge first (`owner:github:acme`, `repo:forgejo:acme/widgets`) when one Solstice serves
several forges whose owners share a name; without it they apply on every forge. Names are
compared case-insensitively, as the forges compare them.

For a job the narrowest scope holding the secret wins: the repository before its owner before
global, and within each, the forge-specific one before the one for every forge.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from common.errors import SolsticeError
from common.messages import Repo

ScopeKind = Literal["global", "owner", "repo"]
FORGES: tuple[str, ...] = get_args(Repo.model_fields["forge"].annotation)
SYNTAX = "global, owner:ORG or repo:OWNER/NAME (optionally with the forge: owner:github:ORG)"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class InvalidScope(SolsticeError):
    """A scope that is not written as `SYNTAX`."""


@dataclass(frozen=True, order=True)
class Scope:
    kind: ScopeKind
    forge: str = ""   # "" = every forge
    value: str = ""   # "" (global), "owner" or "owner/name", lower case

    def __str__(self) -> str:
        if self.kind == "global":
            return "global"
        return f"{self.kind}:{self.forge + ':' if self.forge else ''}{self.value}"

    @property
    def associated_data(self) -> bytes:
        """What binds a ciphertext to this scope (with the secret's name)."""
        return f"{self.kind}\0{self.forge}\0{self.value}".encode()


def parse_scope(text: str) -> Scope:
    """A scope from its written form; `InvalidScope` saying what is wrong."""
    text = text.strip()
    if text == "global":
        return Scope("global")
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("owner", "repo"):
        raise InvalidScope(f"{text!r} is not a scope", hint=f"write {SYNTAX}")
    forge, colon, value = rest.partition(":")
    if not colon:
        forge, value = "", rest
    elif forge not in FORGES:
        raise InvalidScope(f"{forge!r} in {text!r} is not a forge",
                           hint=f"forges: {', '.join(FORGES)}; or leave it out for every forge")
    parts = value.split("/")
    want = 1 if kind == "owner" else 2
    if len(parts) != want or not all(_NAME.fullmatch(p) for p in parts):
        example = "ORG" if kind == "owner" else "OWNER/NAME"
        raise InvalidScope(f"{text!r}: {kind} scopes name {example} (letters, digits, . _ -)",
                           hint=f"write {SYNTAX}")
    return Scope(kind, forge, value.lower())  # type: ignore[arg-type]


def scopes_for(repo: Repo) -> list[Scope]:
    """Every scope that applies to `repo`, narrowest first."""
    owner, full = repo.owner.lower(), repo.full_name.lower()
    return [Scope("repo", repo.forge, full), Scope("repo", "", full),
            Scope("owner", repo.forge, owner), Scope("owner", "", owner), Scope("global")]
