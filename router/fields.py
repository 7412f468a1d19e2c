"""Strict readers for a JSON object's fields: each wrong type or out-of-range value is a 400 naming the field."""

from __future__ import annotations

import math
from typing import Any

from router.errors import ApiError, invalid

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
               dict: "an object"}


class Fields:
    """Reads fields out of one JSON object; `finish()` rejects whatever was not read."""

    def __init__(self, body: Any, where: str = "") -> None:
        if not isinstance(body, dict):
            raise invalid(f"{where or 'the request body'} must be a JSON object", param=where or None)
        self.body = body
        self.where = where
        self._read: set[str] = set()

    def param(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def raw(self, name: str) -> Any:
        self._read.add(name)
        return self.body.get(name)

    def ignore(self, *names: str) -> None:
        self._read.update(names)

    def _typed(self, name: str, kind: type, required: bool) -> Any:
        value = self.raw(name)
        if value is None:
            if required:
                raise invalid(f"'{self.param(name)}' is required", param=self.param(name), code="missing_field")
            return None
        if not is_type(value, kind):
            raise invalid(f"'{self.param(name)}' must be {_TYPE_NAMES[kind]}, got {json_type(value)}",
                          param=self.param(name), code="invalid_type")
        return float(value) if kind is float else value

    def string(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._typed(name, str, required)
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._typed(name, bool, False)
        return default if value is None else value

    def integer(self, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self._typed(name, int, False)
        if value is None:
            return default
        self._check_range(name, value, lo, hi)
        return value

    def number(self, name: str, default: float, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False) -> float:
        value = self._typed(name, float, False)
        if value is None:
            return default
        if not math.isfinite(value):
            raise invalid(f"'{self.param(name)}' must be finite", param=self.param(name))
        if lo_open and lo is not None and value <= lo:
            raise invalid(f"'{self.param(name)}' must be > {lo:g}, got {value:g}", param=self.param(name))
        self._check_range(name, value, lo, hi)
        return value

    def array(self, name: str) -> list | None:
        return self._typed(name, list, False)

    def obj(self, name: str) -> Fields | None:
        value = self._typed(name, dict, False)
        return None if value is None else Fields(value, self.param(name))

    def _check_range(self, name: str, value: float, lo: float | None, hi: float | None) -> None:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo:g} and {hi:g}" if lo is not None and hi is not None else (
                f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            raise invalid(f"'{self.param(name)}' must be {bounds}, got {value:g}", param=self.param(name))

    def finish(self) -> None:
        unknown = sorted(set(self.body) - self._read)
        if unknown:
            raise invalid(f"unknown field '{self.param(unknown[0])}'", param=self.param(unknown[0]),
                          code="unknown_field")


def is_type(value: Any, kind: type) -> bool:
    if kind is float:
        return type(value) in (int, float)
    return type(value) is kind  # bool is not an int here


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def int_list(value: Any, param: str, *, max_items: int, lo: int = 0) -> list[int]:
    if type(value) is not list or not all(type(v) is int for v in value):
        raise invalid(f"'{param}' must be an array of integers", param=param, code="invalid_type")
    if len(value) > max_items:
        raise invalid(f"'{param}' has {len(value)} items; at most {max_items} are allowed", param=param)
    if any(v < lo or v >= 2**31 for v in value):
        raise invalid(f"'{param}' items must be between {lo} and {2**31 - 1}", param=param)
    return value


def reject_unless(condition: bool, message: str, param: str) -> None:
    if not condition:
        raise ApiError(400, message, param=param, code="unsupported")
