"""Workflow files remembered by (repository, commit, path): a commit's content never changes.

`CachedReader` wraps a forge's `ForgeReader`. A file read at a commit sha is kept in a
bounded LRU, so the deliveries one push causes (GitHub's push and check suite, a redelivery
after a 503, a branch pushed to several refs) fetch it once. A file read at a branch (the
base branch of an untrusted pull request) is always fetched: a branch moves. A file that does
not exist is not remembered.
"""
from __future__ import annotations

import re
from collections import OrderedDict

from common.forge.policy import ForgeReader
from common.messages import Repo

# A full commit id: SHA-1 (40 hex) or SHA-256 (64 hex) object names.
_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class CachedReader:
    """A `ForgeReader` that remembers up to `entries` files read at a commit (module doc)."""

    def __init__(self, reader: ForgeReader, entries: int) -> None:
        self._reader = reader
        self._entries = entries
        self._files: OrderedDict[tuple[str, str, str, str, str], str] = OrderedDict()
        self.hits = 0

    async def fetch_file(self, repo: Repo, path: str, ref: str) -> str | None:
        if self._entries <= 0 or not _COMMIT.match(ref):
            return await self._reader.fetch_file(repo, path, ref)
        key = (repo.forge, repo.api_url, repo.full_name.lower(), ref, path)
        if (text := self._files.get(key)) is not None:
            self._files.move_to_end(key)
            self.hits += 1
            return text
        text = await self._reader.fetch_file(repo, path, ref)
        if text is not None:
            self._files[key] = text
            if len(self._files) > self._entries:
                self._files.popitem(last=False)
        return text

    async def can_write(self, repo: Repo, user: str) -> bool:
        return await self._reader.can_write(repo, user)
