"""Durations ("1h30m" -> 5400 s) and sizes ("8G" -> 8192 MB) as written in workflows."""
from __future__ import annotations

import re
from functools import lru_cache

_DURATION_RE = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_SIZE_RE = re.compile(r"(\d+)\s*([MGT])(?:i?B)?", re.IGNORECASE)
_SIZE_MB = {"M": 1, "G": 1024, "T": 1024 * 1024}


@lru_cache(maxsize=512)
def parse_duration(text: str) -> int | None:
    """Seconds in `text` like "45m", "1h30m", "90s"; None if it is not such a duration or zero."""
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None or not any(m.groups()):
        return None
    hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    total = hours * 3600 + minutes * 60 + seconds
    return total or None


@lru_cache(maxsize=512)
def parse_size_mb(text: str) -> int | None:
    """Megabytes in `text` like "512M", "8G", "1T" (binary units); None if not a size or zero."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        return None
    return int(m.group(1)) * _SIZE_MB[m.group(2).upper()] or None


def format_duration(seconds: int) -> str:
    """The shortest spelling `parse_duration` reads back: 5400 -> "1h30m"."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"
