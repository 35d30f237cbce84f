"""Small helpers for messages people read."""
from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 step`, `2 steps`, `0 steps` (`plural_form` for nouns that take more than an s)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def byte_size(size: int) -> str:
    """`size` bytes as people read them: `512 B`, `1.5 KiB`, `3.2 GiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
