"""`/solstice approve` as maintainers type it in comments, and what is not it."""
from __future__ import annotations

import pytest

from common.forge.commands import Approve, parse_command


@pytest.mark.parametrize("body, expected", [
    ("/solstice approve", Approve()),
    ("Looks fine.\r\n\r\n  /solstice   approve  \r\n", Approve()),
    ("/solstice approve 0D1A26E", Approve("0d1a26e")),
    ("/solstice approve " + "ab" * 20, Approve("ab" * 20)),
    ("first line\n/solstice approve\n/solstice approve abcdef0", Approve()),
])
def test_the_command(body: str, expected: Approve) -> None:
    assert parse_command(body) == expected


@pytest.mark.parametrize("body", [
    "", "please /solstice approve this", "/solstice approved", "/solstice approve abc",
    "/solstice approve " + "a" * 41, "> /solstice approve", "`/solstice approve`",
    "/solstice approve main",
])
def test_not_the_command(body: str) -> None:
    assert parse_command(body) is None
