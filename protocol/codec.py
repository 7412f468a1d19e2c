"""The msgpack codec: a frame is `[PROTOCOL_VERSION, type name, [field values in declared order]]`.

Structs nest as arrays of their field values. Decoding checks every value against the message class's annotations,
so a frame that decodes is a well-typed message. Anything else raises ProtocolError; receivers log, count and drop it.
Never pickle.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

from protocol import messages
from protocol.messages import PROTOCOL_VERSION

DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024


class ProtocolError(ValueError):
    """A frame that is malformed, oversized, of an unknown type or of another protocol version."""


Decoder = Callable[[Any, str], Any]
Encoder = Callable[[Any], Any]


def _bad(path: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{path}: expected {expected}, got {type(value).__name__}")


def _exact(kind: type) -> Decoder:
    def decode(value: Any, path: str) -> Any:
        if type(value) is not kind:
            raise _bad(path, kind.__name__, value)
        return value

    return decode


def _float(value: Any, path: str) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _bad(path, "float", value)


_PRIMITIVES: dict[Any, Decoder] = {int: _exact(int), str: _exact(str), bool: _exact(bool), float: _float}


def _union(options: tuple[Any, ...]) -> Decoder:
    allow_none = type(None) in options
    inner = [_decoder_for(o) for o in options if o is not type(None)]
    if len(inner) == 1:
        only = inner[0]

        def decode_optional(value: Any, path: str) -> Any:
            return None if value is None and allow_none else only(value, path)

        return decode_optional
    kinds = {o for o in options if o is not type(None)}
    if not kinds <= {int, str}:
        raise TypeError(f"unsupported union {options}")

    def decode_union(value: Any, path: str) -> Any:
        if (value is None and allow_none) or type(value) in kinds:
            return value
        raise _bad(path, " | ".join(sorted(k.__name__ for k in kinds)), value)

    return decode_union


def _list(item: Any) -> Decoder:
    item_decode = _decoder_for(item)
    if item in (int, str):

        def decode_plain_list(value: Any, path: str) -> list:
            if type(value) is not list:
                raise _bad(path, "array", value)
            if not all(type(v) is item for v in value):
                raise ProtocolError(f"{path}: expected array of {item.__name__}")
            return value

        return decode_plain_list

    def decode_list(value: Any, path: str) -> list:
        if type(value) is not list:
            raise _bad(path, "array", value)
        return [item_decode(v, path) for v in value]

    return decode_list


def _struct(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _decoder_for(hints[f.name])) for f in dataclasses.fields(cls)]
    name = cls.__name__

    def decode_struct(value: Any, path: str) -> Any:
        if type(value) is not list or len(value) != len(fields):
            raise ProtocolError(f"{path}: expected {name} as an array of {len(fields)} fields")
        return cls(*[decode(v, path) for (_, decode), v in zip(fields, value)])

    return decode_struct


def _decoder_for(annotation: Any) -> Decoder:
    if annotation in _PRIMITIVES:
        return _PRIMITIVES[annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _union(typing.get_args(annotation))
    if origin is list:
        return _list(typing.get_args(annotation)[0])
    if dataclasses.is_dataclass(annotation):
        return _struct(annotation)
    raise TypeError(f"unsupported wire annotation {annotation!r}")


def _encoder_for(cls: type) -> Encoder:
    """Dataclass -> nested arrays. Built once per class; only struct-valued fields recurse."""
    hints = typing.get_type_hints(cls)
    plan: list[tuple[str, Encoder | None]] = []
    for f in dataclasses.fields(cls):
        plan.append((f.name, _value_encoder(hints[f.name])))

    def encode(obj: Any) -> list:
        return [getattr(obj, n) if enc is None else enc(getattr(obj, n)) for n, enc in plan]

    return encode


def _value_encoder(annotation: Any) -> Encoder | None:
    if dataclasses.is_dataclass(annotation):
        return _encoder_for(annotation)
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        inner = _value_encoder(args[0])
        return None if inner is None else (lambda v: None if v is None else inner(v))
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        item = _encoder_for(args[0])
        return lambda values: [item(v) for v in values]
    return None


_MESSAGE_TYPES = messages.TO_WORKER + messages.TO_ROUTER
_DECODERS: dict[str, Decoder] = {cls.__name__: _struct(cls) for cls in _MESSAGE_TYPES}
_ENCODERS: dict[type, tuple[str, Encoder]] = {cls: (cls.__name__, _encoder_for(cls)) for cls in _MESSAGE_TYPES}


def encode(message: Any) -> bytes:
    name, encode_fields = _ENCODERS[type(message)]
    return msgpack.packb([PROTOCOL_VERSION, name, encode_fields(message)], use_bin_type=True)


def decode(frame: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, expect: tuple[type, ...] | None = None) -> Any:
    """bytes -> message. Raises ProtocolError for anything that is not a well-formed, expected message."""
    if len(frame) > max_bytes:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the limit of {max_bytes}")
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise ProtocolError(f"undecodable msgpack: {exc.__class__.__name__}: {exc}") from None
    if type(envelope) is not list or len(envelope) != 3:
        raise ProtocolError("a frame must be [version, type, fields]")
    version, name, fields = envelope
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(f"protocol version {version!r} is not {PROTOCOL_VERSION}")
    decoder = _DECODERS.get(name) if type(name) is str else None
    if decoder is None:
        raise ProtocolError(f"unknown message type {name!r}")
    message = decoder(fields, name)
    if expect is not None and not isinstance(message, expect):
        raise ProtocolError(f"{name} is not expected on this socket")
    return message
