"""Untrusted records (model bundles, engine manifests, XGBoost boosters) validated by converting them.

The bounds live on the record types themselves (msgspec ``Struct`` fields and ``Annotated[int, Meta(ge=,
le=)]``, timm's "validate by converting to the config type"): :func:`convert` and :func:`decode_json` return
the typed record or raise one :class:`SchemaError` naming the bad field's path, e.g.
``config.json: filter_bank.membrane_angles: expected `int` <= 180``.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from dinosaw_deploy.errors import DinosawError

T = TypeVar("T")
MAX_NAME = 1024
Name = Annotated[str, Meta(max_length=MAX_NAME)]
Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
_AT = re.compile(r" - at `\$\.?(.*)`$")


class SchemaError(DinosawError):
    """A record that breaks its schema; the message names the field."""


def _message(exc: Exception) -> str:
    """msgspec's ``Expected `int` <= 180 - at `$.a.b``` as ``a.b: expected `int` <= 180``; unknown and missing
    fields as ``a.b is not a known field`` / ``a.b is missing``."""
    text = str(exc)
    match = _AT.search(text)
    path, reason = (match.group(1), text[:match.start()]) if match else ("", text)
    for pattern, verdict in (("Object contains unknown field `(.+)`", "is not a known field"),
                             ("Object missing required field `(.+)`", "is missing")):
        named = re.fullmatch(pattern, reason)
        if named:
            return f"{path + '.' if path else ''}{named.group(1)} {verdict}"
    return f"{path or 'the record'}: {reason[:1].lower()}{reason[1:]}"


def convert(value: Any, kind: type[T], source: str) -> T:
    """``value`` (decoded JSON: dicts, lists, numbers) as a ``kind``, or a SchemaError prefixed by ``source``."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{source}: {_message(exc)}") from None
    except DinosawError as exc:  # a record's own consistency check (__post_init__)
        raise SchemaError(f"{source}: {exc}") from None


def decode_json(raw: bytes, kind: type[T], source: str) -> T:
    """JSON bytes decoded straight into a ``kind`` (one pass, no intermediate dicts), or a SchemaError."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{source}: {_message(exc)}") from None
    except msgspec.DecodeError as exc:
        raise SchemaError(f"{source}: not valid JSON ({exc})") from None
    except DinosawError as exc:
        raise SchemaError(f"{source}: {exc}") from None


def to_builtins(record: Any) -> Any:
    """A record as the plain data JSON decodes to (dicts, lists, numbers), so it compares equal to a read one."""
    return msgspec.json.decode(msgspec.json.encode(record))
