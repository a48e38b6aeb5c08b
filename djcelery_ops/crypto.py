"""Encryption at rest of dead-letter payloads (the ``[crypto]`` extra: ``cryptography``).

``DJCELERY_OPS_ENCRYPTION_KEYS`` is a list of Fernet keys: the first encrypts, all of them
decrypt (``MultiFernet``), so a new key goes first and the old one stays second until
``reencrypt_dead_letters`` has moved every row to the new one. Empty (the default): values
are stored in clear, as before.

A sealed value is a marked envelope that fits where the clear value was: a JSON value
becomes ``{"__djcelery_ops_sealed__": "<token>"}`` (JSON columns keep their type, no
migration), a text becomes ``"djcelery_ops:sealed:<token>"``. Anything else is clear and
opens as itself, so rows written before encryption was turned on stay readable.

A token no configured key opens (the key was lost, or removed from the list too early)
raises ``PayloadKeyError``, never a value standing in for the real one: a replay of such a
row is refused and the admin says why. ``cryptography`` is imported on first use only.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from djcelery_ops.conf import ops_settings

ENVELOPE_KEY = "__djcelery_ops_sealed__"
TEXT_PREFIX = "djcelery_ops:sealed:"
SETTING = "DJCELERY_OPS_ENCRYPTION_KEYS"


class PayloadKeyError(Exception):
    """A sealed value that none of ``DJCELERY_OPS_ENCRYPTION_KEYS`` opens."""


def configured_keys() -> tuple[str, ...]:
    keys = ops_settings.ENCRYPTION_KEYS or ()
    if isinstance(keys, str | bytes):  # one key given bare, not in a list
        keys = [keys]
    return tuple(key.decode() if isinstance(key, bytes) else str(key) for key in keys)


def encryption_enabled() -> bool:
    return bool(configured_keys())


@functools.lru_cache(maxsize=4)
def _multi_fernet(keys: tuple[str, ...]) -> Any:
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as error:
        raise ImproperlyConfigured(
            f"{SETTING} is set but the cryptography package is not installed: "
            "pip install 'djcelery-ops[crypto]'"
        ) from error
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, TypeError) as error:
        raise ImproperlyConfigured(
            f"{SETTING} holds a value that is not a Fernet key ({error}); make one with "
            "cryptography.fernet.Fernet.generate_key()"
        ) from error


def _fernet() -> Any:
    keys = configured_keys()
    if not keys:
        return None
    return _multi_fernet(keys)


def key_problem() -> str | None:
    """Why ``DJCELERY_OPS_ENCRYPTION_KEYS`` cannot be used (system check), or None."""
    try:
        _fernet()
    except ImproperlyConfigured as error:
        return str(error)
    return None


def is_sealed(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(TEXT_PREFIX)
    return isinstance(value, dict) and len(value) == 1 and ENVELOPE_KEY in value


def _encrypt(text: str) -> str:
    token: bytes = _fernet().encrypt(text.encode("utf-8"))
    return token.decode("ascii")


def _decrypt(token: str) -> str:
    fernet = _fernet()
    if fernet is None:
        raise PayloadKeyError(
            f"this payload is encrypted and {SETTING} is empty: restore the key it was "
            "encrypted with to read or replay it"
        )
    from cryptography.fernet import InvalidToken

    try:
        return str(fernet.decrypt(token.encode("ascii")).decode("utf-8"))
    except InvalidToken:
        raise PayloadKeyError(
            f"this payload was encrypted with a key that is not in {SETTING} (lost, or "
            "removed before reencrypt_dead_letters moved it to the new key): restore that "
            "key to read or replay it"
        ) from None


def seal(value: Any) -> Any:
    """A JSON value as an envelope when encryption is on; else ``value`` unchanged."""
    if value is None or is_sealed(value) or not encryption_enabled():
        return value
    return {ENVELOPE_KEY: _encrypt(json.dumps(value))}


def unseal(value: Any) -> Any:
    """The JSON value an envelope holds; a clear value as it is. ``PayloadKeyError``."""
    if isinstance(value, dict) and is_sealed(value):
        return json.loads(_decrypt(str(value[ENVELOPE_KEY])))
    return value


def seal_text(text: str) -> str:
    if not text or is_sealed(text) or not encryption_enabled():
        return text
    return TEXT_PREFIX + _encrypt(text)


def unseal_text(text: str) -> str:
    if is_sealed(text):
        return _decrypt(text[len(TEXT_PREFIX) :])
    return text


def sealed_with_first_key(value: Any) -> bool:
    """Whether ``value`` (an envelope or a sealed text) opens with the first key alone:
    ``reencrypt_dead_letters`` leaves such values as they are."""
    keys = configured_keys()
    if not keys or not is_sealed(value):
        return False
    token = value[ENVELOPE_KEY] if isinstance(value, dict) else value[len(TEXT_PREFIX) :]
    from cryptography.fernet import InvalidToken

    try:
        _multi_fernet(keys[:1]).decrypt(str(token).encode("ascii"))
    except InvalidToken:
        return False
    return True


def reseal(value: Any) -> Any:
    """A JSON value sealed under the first key: a clear one sealed, a sealed one
    re-encrypted (``PayloadKeyError`` if no key opens it)."""
    return seal(unseal(value))


def reseal_text(text: str) -> str:
    """``reseal`` for a text."""
    return seal_text(unseal_text(text))


__all__ = [
    "ENVELOPE_KEY",
    "TEXT_PREFIX",
    "PayloadKeyError",
    "encryption_enabled",
    "is_sealed",
    "key_problem",
    "reseal",
    "reseal_text",
    "seal",
    "seal_text",
    "sealed_with_first_key",
    "unseal",
    "unseal_text",
]


def check_encryption_keys(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """System check ``djcelery_ops.E009``, registered by the app config."""
    from django.core import checks

    problem = key_problem()
    if problem is None:
        return []
    return [
        checks.Error(
            problem,
            hint=f"Set {SETTING} to a list of Fernet keys (the first encrypts) and install "
            "djcelery-ops[crypto], or leave it empty to store payloads in clear.",
            id="djcelery_ops.E009",
        )
    ]
