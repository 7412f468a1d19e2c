"""The msgpack codec: a frame is `[PROTOCOL_VERSION, type name, [field values in declared order]]`.

Structs nest as arrays of their field values. Decoding checks every value against the message class's annotations,
so a frame that decodes is a well-typed message. Anything else raises ProtocolError; receivers log, count and drop it.
Never pickle.
"""

from __future__ import annotations

import dataclasses
import itertools
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


_NONE = type(None)
_EXACT_KINDS = (int, str, bool, _NONE)  # checked by `type(v) is kind`; float is not: it also takes ints


def _exact_kinds(annotation: Any) -> frozenset[type] | None:
    """The exact types an annotation of plain scalars allows (`int`, `str | int | None`), else None."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return frozenset(options) if all(o in _EXACT_KINDS for o in options) else None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _names(kinds: frozenset[type]) -> str:
    return " | ".join(sorted("null" if k is _NONE else k.__name__ for k in kinds))


def _scalar(kinds: frozenset[type]) -> Decoder:
    def decode_scalar(value: Any, path: str) -> Any:
        if type(value) not in kinds:
            raise _bad(path, _names(kinds), value)
        return value

    return decode_scalar


def _float(value: Any, path: str) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _bad(path, "float", value)


def _optional(inner: Decoder) -> Decoder:
    def decode_optional(value: Any, path: str) -> Any:
        return None if value is None else inner(value, path)

    return decode_optional


_LIST = frozenset({list})


def _scalar_list(kinds: frozenset[type]) -> Decoder:
    """A list of plain scalars is checked in one pass with no Python call per item: `kinds.issuperset(map(type, ...))`
    runs in C, and stops at the first item of another type."""

    def decode_scalar_list(value: Any, path: str) -> list:
        if type(value) is not list:
            raise _bad(path, "array", value)
        if not kinds.issuperset(map(type, value)):
            raise ProtocolError(f"{path}: expected array of {_names(kinds)}")
        return value

    return decode_scalar_list


def _scalar_list_list(kinds: frozenset[type]) -> Decoder:
    """A list of lists of plain scalars (a column of token ids): two flat passes, no call per row."""

    def decode_scalar_list_list(value: Any, path: str) -> list:
        if type(value) is not list or not _LIST.issuperset(map(type, value)):
            raise ProtocolError(f"{path}: expected array of arrays")
        if not kinds.issuperset(map(type, itertools.chain.from_iterable(value))):
            raise ProtocolError(f"{path}: expected array of arrays of {_names(kinds)}")
        return value

    return decode_scalar_list_list


def _list(item: Any) -> Decoder:
    kinds = _exact_kinds(item)
    if kinds is not None:
        return _scalar_list(kinds)
    if typing.get_origin(item) is list and (inner_kinds := _exact_kinds(typing.get_args(item)[0])) is not None:
        return _scalar_list_list(inner_kinds)
    item_decode = _decoder_for(item)

    def decode_list(value: Any, path: str) -> list:
        if type(value) is not list:
            raise _bad(path, "array", value)
        return [item_decode(v, path) for v in value]

    return decode_list


def _struct(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = [_decoder_for(hints[f.name]) for f in dataclasses.fields(cls)]
    name = cls.__name__

    def decode_struct(value: Any, path: str) -> Any:
        if type(value) is not list or len(value) != len(fields):
            raise ProtocolError(f"{path}: expected {name} as an array of {len(fields)} fields")
        values = [decode(v, path) for decode, v in zip(fields, value)]
        try:
            return cls(*values)
        except ValueError as exc:  # a message's own check, e.g. StepOutputs' columns of one length
            raise ProtocolError(f"{path}: {exc}") from None

    return decode_struct


def _decoder_for(annotation: Any) -> Decoder:
    kinds = _exact_kinds(annotation)
    if kinds is not None:
        return _scalar(kinds)
    if annotation is float:
        return _float
    args = [a for a in typing.get_args(annotation) if a is not _NONE]
    if _is_union(annotation) and len(args) == 1:
        return _optional(_decoder_for(args[0]))
    if typing.get_origin(annotation) is list:
        return _list(args[0])
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
    """How to turn a value into msgpack-ready data, or None where it already is (no struct inside)."""
    if dataclasses.is_dataclass(annotation):
        return _encoder_for(annotation)
    args = [a for a in typing.get_args(annotation) if a is not _NONE]
    inner = _value_encoder(args[0]) if len(args) == 1 else None
    if inner is None:
        return None
    if typing.get_origin(annotation) is list:
        return lambda values: [inner(v) for v in values]
    return lambda v: None if v is None else inner(v)


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
