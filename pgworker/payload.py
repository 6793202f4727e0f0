"""Payload codecs: a task's payload type checks what is deferred and decodes what runs."""

from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

import msgspec

from .errors import PayloadError

T = TypeVar("T")

#: The payload key that carries trace context, and how it looks in JSON text.
TRACE_KEY = "_trace"
TRACE_TEXT = '"_trace"'
TRACE_MARKER = TRACE_TEXT.encode()
NULL_MARKER = b"null"
#: The default limit on a deferred payload's size, as JSON: ``App(max_payload_bytes=...)``.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


def _type_name(payload_type: Any) -> str:
    return getattr(payload_type, "__name__", None) or repr(payload_type)


class PayloadCodec(Generic[T]):
    """Encodes and decodes the payloads of one task, built once per task.

    ``payload_type`` is any type msgspec understands: a ``msgspec.Struct``, a dataclass,
    a ``TypedDict``, ``dict[str, int]``, ``Any``...
    """

    def __init__(self, payload_type: Any) -> None:
        self.payload_type = payload_type
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(payload_type)
        self._list_decoder: msgspec.json.Decoder[list[T]] = msgspec.json.Decoder(list[payload_type])
        self._checks = payload_type is not Any

    def encode(self, payload: object, *, max_bytes: int | None = None) -> str:
        """Check ``payload`` against the payload type and return it as JSON text.

        Raises PayloadError, naming the field, when it does not match, or when it holds
        a NaN or an infinity (JSON has neither: they would be stored as null); and when
        its JSON is longer than ``max_bytes`` (None: no limit).
        """
        try:
            data = self._encoder.encode(payload)
        except (TypeError, msgspec.EncodeError, UnicodeEncodeError, RecursionError) as exc:
            # UnicodeEncodeError: a lone surrogate; RecursionError: nesting too deep.
            raise PayloadError(f"payload cannot be encoded as JSON: {exc}") from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise PayloadError(
                f"payload is {len(data):,} bytes of JSON, over the limit of {max_bytes:,} "
                "(App(max_payload_bytes=...)): store large data elsewhere and pass a reference"
            )
        if NULL_MARKER in data:
            # msgspec writes NaN and infinities as null: only then can one hide in there,
            # so payloads without a null skip the walk.
            try:
                _refuse_non_finite(payload)
            except RecursionError as exc:
                raise PayloadError(f"payload cannot be checked: {exc}") from exc
        if self._checks:
            # Decoding what we are about to store is the one check that covers dicts,
            # structs built with wrong field types and nested values alike.
            self.decode(data)
        return data.decode()

    def encode_all(self, payloads: list[Any], *, max_bytes: int | None = None) -> str | None:
        """``payloads`` as one JSON array text, each element what ``encode`` makes of
        it, checked in one go; None where a payload is null, holds a NaN, an infinity or
        a ``_trace`` key, the array is longer than ``max_bytes``, or a check fails: then
        ``encode`` each payload, to refuse the faulty one by name (or to accept one that
        only looked suspicious).
        """
        try:
            data = self._encoder.encode(payloads)
        except (TypeError, msgspec.EncodeError, UnicodeEncodeError, RecursionError):
            return None
        # A _trace key must be left out before the check, and an array within the limit
        # has every payload within it.
        if TRACE_MARKER in data:
            return None
        if max_bytes is not None and len(data) > max_bytes:
            return None
        try:
            # Checked against the type, or only parsed: either way, one value per payload
            # (a msgspec.Raw payload may hold several, or be no JSON at all).
            values = (self._list_decoder if self._checks else _ELEMENTS).decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return None
        if len(values) != len(payloads):
            return None
        if NULL_MARKER in data and not _only_real_nulls(payloads, values, data):
            return None
        return data.decode()

    def decode(self, data: str | bytes) -> T:
        """Decode a stored payload; raises PayloadError naming the field on a mismatch.

        A ``_trace`` key (trace context that tracing plugins and the Rust crate add to
        object payloads) is left out first, so strict payload types accept it.
        """
        marker = TRACE_MARKER if isinstance(data, bytes) else TRACE_TEXT
        try:
            if self._checks and marker in data:  # type: ignore[operator]
                data = _without_trace(data)
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise PayloadError(
                f"payload does not match {_type_name(self.payload_type)}: {exc}",
                path=_error_path(str(exc)),
            ) from exc
        except msgspec.DecodeError as exc:
            raise PayloadError(f"payload is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise PayloadError(f"payload cannot be decoded: {exc}") from exc


#: Parses a JSON array into its elements, each left as its text.
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])


def count_values(array: str) -> int | None:
    """How many values the JSON array text ``array`` holds; None if it is no JSON."""
    try:
        return len(_ELEMENTS.decode(array))
    except (msgspec.DecodeError, RecursionError):
        return None


#: A null payload, as ``_ELEMENTS`` reads it.
_RAW_NULL = msgspec.Raw(NULL_MARKER)


def _only_real_nulls(payloads: list[Any], values: list[Any], data: bytes) -> bool:
    """Whether the nulls in ``data``, the JSON of ``payloads`` (decoded as ``values``,
    or as msgspec.Raw elements), are Nones inside them: no payload is null itself (a
    batch can't carry one), and none holds a NaN or an infinity, which msgspec writes
    as null."""
    if any(value is None or value == _RAW_NULL for value in values):
        return False
    if values and isinstance(values[0], msgspec.Raw):
        values = msgspec.json.decode(data)
    if values == payloads:  # a NaN would differ from the null it became
        return True
    try:  # payloads that don't compare (dicts for a Struct, tuples): look for one
        return _find_non_finite(_builtins(payloads), []) is None
    except RecursionError:
        return False


def _builtins(payload: object) -> object:
    """``payload`` as built-in types, for the walk that looks for NaNs; a msgspec.Raw is
    left as None (its text is JSON: no NaN can be in it)."""
    return msgspec.to_builtins(payload, enc_hook=_raw_as_leaf)


def _raw_as_leaf(value: object) -> object:
    if isinstance(value, msgspec.Raw):
        return None
    raise NotImplementedError  # msgspec's TypeError, as without the hook


def _refuse_non_finite(payload: object) -> None:
    trail: list[object] = []
    value = _find_non_finite(_builtins(payload), trail)
    if value is not None:
        path = "$" + "".join(
            f".{key}" if isinstance(key, str) else f"[{key!r}]" for key in reversed(trail)
        )
        raise PayloadError(
            f"payload holds {value} at `{path}`: JSON has no NaN or infinity, and it would "
            "be stored as null; send None or a string instead",
            path=path,
        )


_LEAVES = (str, int, bool, type(None))
_SEQUENCES = (list, tuple, set, frozenset)


def _find_non_finite(value: object, trail: list[object]) -> float | None:
    """The first NaN or infinity in ``value`` (built-in types), its keys and indexes
    appended to ``trail`` innermost first."""
    items: Any
    if type(value) is dict:
        items = value.items()
    elif isinstance(value, _SEQUENCES):
        items = enumerate(value)
    elif isinstance(value, float):
        return None if math.isfinite(value) else value
    else:
        return None
    for key, item in items:
        if type(item) in _LEAVES:  # the common leaves, skipped cheaply
            continue
        found = _find_non_finite(item, trail)
        if found is not None:
            trail.append(key)
            return found
    return None


def _without_trace(data: str | bytes) -> bytes:
    value = msgspec.json.decode(data)
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict):
            item.pop(TRACE_KEY, None)
    return msgspec.json.encode(value)


def _error_path(message: str) -> str | None:
    marker = " - at `"
    start = message.rfind(marker)
    if start < 0:
        return None
    return message[start + len(marker) :].rstrip("`")
