"""A small, bounded reader of Universal Binary JSON (UBJSON, draft 12), as XGBoost writes its models.

Used to inspect an untrusted ``classifier.ubj`` before XGBoost (native code) ever sees it. Every
declared length or count is checked against the bytes that remain before anything is allocated,
nesting depth is capped, and any malformation is a :class:`UbjsonError`. Strongly typed numeric
arrays (``[$l#...``) come back as big-endian numpy arrays (zero-copy views of the input).
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

MAX_DEPTH = 64

_SCALARS = {  # marker -> (struct format, size)
    b"i": (">b", 1), b"U": (">B", 1), b"I": (">h", 2), b"l": (">i", 4), b"L": (">q", 8),
    b"d": (">f", 4), b"D": (">d", 8),
}
_NUMPY = {b"i": ">i1", b"U": "u1", b"I": ">i2", b"l": ">i4", b"L": ">i8", b"d": ">f4", b"D": ">f8"}


class UbjsonError(ValueError):
    """The bytes are not well-formed (or not bounded) UBJSON."""


class TypedArray(np.ndarray):
    """A numpy array read from a strongly typed UBJSON array; ``marker`` is its UBJSON element type."""

    marker: bytes = b""


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode one UBJSON value that spans all of ``data``."""
    reader = _Reader(memoryview(bytes(data)))
    value = reader.value(reader.marker(), 0)
    if reader.pos != len(reader.data):
        raise UbjsonError(f"{len(reader.data) - reader.pos} trailing bytes after the value")
    return value


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise UbjsonError(f"truncated: {n} bytes declared at offset {self.pos}, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def marker(self) -> bytes:
        marker = bytes(self.take(1))
        while marker == b"N":  # no-op
            marker = bytes(self.take(1))
        return marker

    def number(self, marker: bytes) -> int | float:
        if marker not in _SCALARS:
            raise UbjsonError(f"unknown type marker {marker!r} at offset {self.pos - 1}")
        fmt, size = _SCALARS[marker]
        return struct.unpack(fmt, self.take(size))[0]

    def length(self) -> int:
        marker = self.marker()
        if marker not in (b"i", b"U", b"I", b"l", b"L"):
            raise UbjsonError(f"a length must be an integer, got marker {marker!r} at offset {self.pos - 1}")
        n = self.number(marker)
        if n < 0 or n > len(self.data) - self.pos:
            raise UbjsonError(f"declared length {n} at offset {self.pos} exceeds the {len(self.data) - self.pos} "
                              "bytes left")
        return n

    def string(self) -> str:
        try:
            return str(self.take(self.length()), "utf-8")
        except UnicodeDecodeError as exc:
            raise UbjsonError(f"invalid UTF-8 string ({exc})") from None

    def value(self, marker: bytes, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise UbjsonError(f"nesting deeper than {MAX_DEPTH}")
        if marker == b"Z":
            return None
        if marker in (b"T", b"F"):
            return marker == b"T"
        if marker in _SCALARS:
            return self.number(marker)
        if marker in (b"S", b"H"):
            return self.string()
        if marker == b"C":
            return chr(self.take(1)[0])
        if marker == b"[":
            return self.array(depth)
        if marker == b"{":
            return self.object(depth)
        raise UbjsonError(f"unknown type marker {marker!r} at offset {self.pos - 1}")

    def container_header(self) -> tuple[bytes | None, int | None]:
        """(element type, count) of an optimised container, or (None, None)."""
        kind = count = None
        if bytes(self.data[self.pos : self.pos + 1]) == b"$":
            self.pos += 1
            kind = bytes(self.take(1))
            if bytes(self.data[self.pos : self.pos + 1]) != b"#":
                raise UbjsonError(f"a typed container needs a count (offset {self.pos})")
        if bytes(self.data[self.pos : self.pos + 1]) == b"#":
            self.pos += 1
            count = self.length()
        return kind, count

    def array(self, depth: int) -> Any:
        kind, count = self.container_header()
        if kind in _NUMPY:
            size = np.dtype(_NUMPY[kind]).itemsize
            if count * size > len(self.data) - self.pos:
                raise UbjsonError(f"typed array of {count} x {size} bytes at offset {self.pos} runs past the end")
            array = np.frombuffer(self.take(count * size), dtype=_NUMPY[kind]).view(TypedArray)
            array.marker = kind
            return array
        items = []
        if count is None:
            while (marker := self.marker()) != b"]":
                items.append(self.value(marker, depth + 1))
            return items
        for _ in range(count):
            items.append(self.value(kind or self.marker(), depth + 1))
        return items

    def object(self, depth: int) -> dict[str, Any]:
        kind, count = self.container_header()
        out: dict[str, Any] = {}
        if count is None:
            while bytes(self.data[self.pos : self.pos + 1]) != b"}":
                key = self.string()
                out[key] = self.value(self.marker(), depth + 1)
            self.pos += 1
            return out
        for _ in range(count):
            key = self.string()
            out[key] = self.value(kind or self.marker(), depth + 1)
        return out
