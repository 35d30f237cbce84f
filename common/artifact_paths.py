"""What an artifact may be called: the one rule the runner and the orchestrator both apply.

An artifact's path names it wherever it is shown or downloaded later (web pages, a browser's
save dialog, a Windows checkout of the files), so it must be a plain relative POSIX path with
nothing that reads differently from what it is: no way out of its directory, no second
separator, no invisible or direction-changing characters.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from urllib.parse import quote

from common.errors import SolsticeError

MAX_PATH_BYTES = 1024
# A job's directory name (`job_directory`) stays within this many bytes.
MAX_JOB_DIRECTORY = 200
# Characters a job key keeps as they are in its directory name, besides letters and digits.
JOB_SAFE = "[]=,+-_.@~ "
MAX_COMPONENT_BYTES = 255
# Unicode's Bidi_Control characters (the embeddings and overrides U+202A-U+202E, the isolates
# U+2066-U+2069 and the marks): they make a name display as something else ("Trojan Source").
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                          "\u2066\u2067\u2068\u2069")
_DRIVE = re.compile(r"[A-Za-z]:")


class ArtifactPathError(SolsticeError):
    """An artifact path the rules refuse; the message says which rule."""


def _refuse(path: str, why: str) -> ArtifactPathError:
    return ArtifactPathError(f"artifact path {path!r} refused: {why}",
                             hint="artifact paths are relative POSIX paths inside the workspace "
                                  "made of plain, printable names")


def check_artifact_path(path: str) -> str:
    """Return `path` if it is an acceptable artifact path, else raise `ArtifactPathError`.

    Accepted: relative POSIX paths of at most 1024 bytes (UTF-8) whose `/`-separated
    components are non-empty, not `.` or `..`, at most 255 bytes each, with no backslash, no
    control character (NUL and newline included) and no bidirectional control; nor may the
    path start with a drive letter (`C:`). Nothing is normalised: a path is taken as written
    or refused, so the name stored is the name the runner meant.
    """
    if not path:
        raise _refuse(path, "it is empty")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise _refuse(path, f"it is longer than {MAX_PATH_BYTES} bytes")
    for char in path:
        if char == "\\":
            raise _refuse(path, "backslashes are not path separators here")
        if unicodedata.category(char) == "Cc":
            raise _refuse(path, f"it contains the control character U+{ord(char):04X}")
        if char in BIDI_CONTROLS:
            raise _refuse(path, f"it contains the bidirectional control U+{ord(char):04X}")
    if path.startswith("/"):
        raise _refuse(path, "it is absolute")
    if _DRIVE.match(path):
        raise _refuse(path, "it starts with a drive letter")
    for component in path.split("/"):
        if component in ("", ".", ".."):
            raise _refuse(path, f"it has a {component!r} component" if component
                          else "it has an empty component (a leading, trailing or double /)")
        if len(component.encode()) > MAX_COMPONENT_BYTES:
            raise _refuse(path, f"a component is longer than {MAX_COMPONENT_BYTES} bytes")
    return path


def job_directory(job_key: str) -> str:
    """A job's key (`build[os=omnios/r151046,rust=stable]`) as one directory name, where the
    orchestrator's blob store and `ciadm download` put the job's artifacts: percent-encoded
    where a key could hold `/`, `%` or a control character, never `.` or `..`, and past
    `MAX_JOB_DIRECTORY` bytes shortened with a digest of the whole key."""
    encoded = quote(job_key, safe=JOB_SAFE)
    if encoded.strip(".") == "":
        encoded = encoded.replace(".", "%2E") or "%00"
    if len(encoded) > MAX_JOB_DIRECTORY:
        digest = hashlib.sha256(job_key.encode()).hexdigest()[:16]
        encoded = f"{encoded[:MAX_JOB_DIRECTORY - 17]}~{digest}"
    return encoded
