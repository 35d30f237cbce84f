"""The keys that encrypt stored secrets, and AES-GCM with them.

Keys come from files or environment variables named in `secret_keys`, never from the
database, so a copy of the database (a backup, a replica) holds only ciphertext. Each key has
an id; every stored value records the id of the key that encrypted it, so several keys can be
configured at once and the operator can rotate: add a new key last (the last key listed
encrypts), run `ciadm secret rotate-key`, then drop the old one.

A key is 32 random bytes (AES-256), written base64-encoded: `openssl rand -base64 32`.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import ConfigError, SolsticeError

KEY_BYTES = 32
NONCE_BYTES = 12  # 96 bits: AES-GCM's own nonce size, random per value
GENERATE_HINT = "create one with: umask 077; openssl rand -base64 32 > /etc/solstice/secret-key-ID"
ROTATE_HINT = ("list every key still in use in secret_keys (the newest last), then run "
               "`ciadm secret rotate-key` to move every secret to the newest")
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class SecretKeyConfig(BaseModel):
    """One entry of `secret_keys`: an id and where its key is (a file or a variable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=KEY_ID.pattern)
    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretKeyConfig:
        if (self.file is None) == (self.env is None):
            raise ValueError(f"secret key {self.id!r} needs exactly one of `file` or `env`")
        return self


def parse_secret_keys(value: Any) -> Any:
    """`secret_keys` as TOML gives it (a list of tables), or in the environment's form
    `ID=file:PATH,ID=env:VARIABLE` (the last one encrypts)."""
    if not isinstance(value, str):
        return value
    entries = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        key_id, sep, where = part.partition("=")
        kind, colon, source = where.partition(":")
        if not sep or not colon or kind not in ("file", "env") or not source:
            raise ValueError(f"secret_keys entry {part!r} is not ID=file:PATH or ID=env:VARIABLE")
        entries.append({"id": key_id.strip(), kind: source.strip()})
    return entries


class MissingKey(SolsticeError):
    """A stored value names a key id this orchestrator was not given."""


class DecryptionFailed(SolsticeError):
    """The key is there but the value does not decrypt: altered, or moved to another scope."""


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where} does not hold a base64-encoded {KEY_BYTES}-byte key",
                          hint=GENERATE_HINT)
    return key


def _read(entry: SecretKeyConfig) -> bytes:
    if entry.file is not None:
        try:
            text = entry.file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read secret key {entry.id!r} from {entry.file}: "
                              f"{exc.strerror or exc}",
                              hint="check the path and that the orchestrator's user may read it"
                              ) from exc
        return _decode(text, f"secret key file {entry.file} (key {entry.id!r})")
    assert entry.env is not None
    text = os.environ.get(entry.env)
    if not text:
        raise ConfigError(f"secret key {entry.id!r}: the environment variable {entry.env} is "
                          "not set", hint=GENERATE_HINT)
    return _decode(text, f"the environment variable {entry.env} (key {entry.id!r})")


@dataclass(frozen=True)
class Sealed:
    """A value as stored: ciphertext (with GCM's tag), its nonce and the key's id."""

    ciphertext: bytes
    nonce: bytes = field(repr=False)
    key_id: str


class KeyRing:
    """The configured keys by id; the last one configured encrypts."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self.newest = keys[-1][0] if keys else None

    def __repr__(self) -> str:
        return f"KeyRing(ids={list(self._keys)}, newest={self.newest!r})"

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def seal(self, value: str, associated: bytes) -> Sealed:
        """Encrypt `value` under the newest key with a fresh random nonce."""
        if self.newest is None:
            raise MissingKey("this orchestrator has no secret_keys configured, so it cannot "
                             "store secrets", hint=GENERATE_HINT + "; then add it to "
                             "secret_keys (docs/config.md)")
        nonce = os.urandom(NONCE_BYTES)
        return Sealed(self._keys[self.newest].encrypt(nonce, value.encode(), associated),
                      nonce, self.newest)

    def open(self, sealed: Sealed, associated: bytes, what: str) -> str:
        """Decrypt `sealed`; `what` names the secret in the errors (never its value)."""
        key = self._keys.get(sealed.key_id)
        if key is None:
            configured = ", ".join(self._keys) or "none"
            raise MissingKey(f"{what} is encrypted with key {sealed.key_id!r}, which this "
                             f"orchestrator does not have (configured: {configured})",
                             hint=ROTATE_HINT)
        try:
            return key.decrypt(sealed.nonce, sealed.ciphertext, associated).decode()
        except InvalidTag:
            raise DecryptionFailed(f"{what} does not decrypt with key {sealed.key_id!r}: the "
                                   "stored row was altered or copied from another scope, or "
                                   "the key file changed", hint="set the secret again with "
                                   "`ciadm secret set`") from None


def load_keyring(entries: list[SecretKeyConfig]) -> KeyRing:
    """Read every configured key; a ConfigError naming the key that cannot be used."""
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ConfigError(f"secret key id {entry.id!r} is listed twice in secret_keys",
                              hint="give each key its own id")
        seen.add(entry.id)
    return KeyRing([(entry.id, _read(entry)) for entry in entries])
