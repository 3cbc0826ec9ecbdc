"""The engine socket's wire format: length-prefixed msgspec JSON frames, and the description
of each remote method that both ends derive from the facade's own signatures.

A frame is a 4-byte big-endian length and a JSON document of at most FRAME_BYTES_MAX bytes:

    call   [request_id, slots, method, params]   worker -> engine
    reply  [request_id, status, body]            engine -> worker

`method` is a facade path and a method name ("billing.payments.set_customer"); `params` maps
parameter names to values, decoded on the engine with a type built from the method's type
hints, so a call arrives as the same typed objects the worker passed. `slots` are the slots of
the accounts the call names (DESIGN.md "Processes and scale-out"). A reply's body is the
result (OK), a BillingError as `WireError` (ERROR), re-raised as the same class in the worker,
or a message (FAILED: an unexpected error, a 500 like in-process).

Why JSON rather than msgpack: ledger ids are 128-bit ULID integers, which msgpack cannot
carry (msgspec refuses ints beyond 2**64), so msgpack would need a Python-level pass over
every reply. Measured (`python -m bench engine-ipc`, wire figures): msgspec JSON costs about
1.5 µs more per call and reply than msgspec msgpack, under 0.3 % of an HTTP debit, and both
are 4-8x faster than pickle or cbor2.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import operator
import struct
import types
import typing
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, NamedTuple

import msgspec

from engine.errors import BillingError, Overloaded
from engine.ids import UserId

SLOTS = 4096
HEADER = struct.Struct(">I")
FRAME_BYTES_MAX = 16 * 1024 * 1024  # a 1000-event batch of 1 MiB stays far below
PROTOCOL_VERSION = 1

# Reply statuses.
OK = 0
ERROR = 1
FAILED = 2

# Methods the engine socket answers itself (a facade attribute never starts with "$").
HELLO = "$hello"
STATUS = "$status"
METRICS = "$metrics"

EXTENSION_KEY = "$ext"


def slot_of(user_id: UserId) -> int:
    """The account's slot, forever: CRC-32 of the UUID's bytes (stable across processes and
    versions, unlike Python's salted hash) modulo 4096."""
    return zlib.crc32(user_id.bytes) % SLOTS


class EngineUnavailable(Overloaded):
    """The engine process cannot be reached (restarting, or not answering in time): 503 with
    Retry-After. A debit sent before the failure may or may not have been applied; a retry
    with the same event id is answered with the original result."""

    code = "engine_unavailable"


class WrongEngine(EngineUnavailable):
    """A command for a slot this engine does not own (a stale slot map): try again later."""


class RemoteBillingError(BillingError):
    """A BillingError whose class the worker does not know: keeps the engine's code."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None
                 ) -> None:
        super().__init__(message, details)
        self.code = code


class ProtocolError(Exception):
    """A peer broke the framing or the envelope: the connection cannot be trusted further."""


class WireError(NamedTuple):
    """A BillingError on the wire: its class, code, message and instance attributes (details
    and whatever a subclass keeps, such as InsufficientCredits' numbers). A NamedTuple, not a
    Struct: it is sent as an array, so it can share a union with an untagged result Struct."""

    kind: str
    code: str
    message: str
    attributes: dict[str, Any]


def error_to_wire(error: BillingError) -> WireError:
    kind = f"{type(error).__module__}:{type(error).__qualname__}"
    return WireError(kind, error.code, error.message, dict(vars(error)))


def _billing_error_classes() -> Iterator[type[BillingError]]:
    pending: list[type[BillingError]] = [BillingError]
    while pending:
        cls = pending.pop()
        yield cls
        pending.extend(cls.__subclasses__())


def _error_class(kind: str) -> type[BillingError] | None:
    module, _, qualname = kind.partition(":")
    for _attempt in range(2):
        for cls in _billing_error_classes():
            if cls.__module__ == module and cls.__qualname__ == qualname:
                return cls
        with contextlib.suppress(ImportError):  # defined in a module not imported here yet
            importlib.import_module(module)
    return None


def error_from_wire(wire: WireError) -> BillingError:
    """The same exception class the engine raised, with the same attributes; only
    BillingError subclasses are ever rebuilt."""
    cls = _error_class(wire.kind)
    if cls is None:
        return RemoteBillingError(wire.code, wire.message, wire.attributes.get("details"))
    error = cls.__new__(cls)
    Exception.__init__(error, wire.message)
    error.__dict__.update(wire.attributes)
    return error


@dataclass(frozen=True)
class Extension:
    """A type that is not plain data but must cross the socket (the HTTP layer's request
    headers): sent as {"$ext": tag, "value": to_wire(obj)}, rebuilt for parameters typed Any."""

    kind: type
    tag: str
    to_wire: Callable[[Any], Any]
    from_wire: Callable[[Any], Any]


class WireTypeError(TypeError):
    """A facade method whose signature cannot be carried over the socket."""


def _wire_type(hint: Any) -> Any:
    """`hint` with every exception type replaced by WireError (report_usage_many returns a
    list of results and errors)."""
    if isinstance(hint, type) and issubclass(hint, BaseException):
        return WireError
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if not args or origin is typing.Annotated or origin is typing.Literal:
        return hint
    converted = tuple(_wire_type(arg) for arg in args)
    if converted == args:
        return hint
    if origin in (typing.Union, types.UnionType):
        return reduce(operator.or_, converted)
    return origin[converted if len(converted) > 1 else converted[0]]


def _contains_error(hint: Any) -> bool:
    return _wire_type(hint) is not hint


def restore_errors(value: Any) -> Any:
    """Replace WireError values (in lists, tuples and dict values) by their exceptions."""
    if isinstance(value, WireError):
        return error_from_wire(value)
    if isinstance(value, list):
        return [restore_errors(item) for item in value]
    if isinstance(value, tuple):
        return tuple(restore_errors(item) for item in value)
    if isinstance(value, dict):
        return {key: restore_errors(item) for key, item in value.items()}
    return value


def _strip_none(hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _names_user(hint: Any) -> Callable[[Any], Iterator[UserId]] | None:
    """How to find the account(s) a parameter of this type names, if it names any: a UserId,
    a record with a `user_id: UserId` field, or a sequence of such records."""
    hint = _strip_none(hint)
    if hint is UserId:
        return lambda value: iter((value,))
    if isinstance(hint, type):
        try:
            fields = typing.get_type_hints(hint)
        except (NameError, TypeError):
            return None
        if _strip_none(fields.get("user_id")) is UserId:
            return lambda value: iter((value.user_id,))
        return None
    origin = typing.get_origin(hint)
    if isinstance(origin, type) and issubclass(origin, Sequence) and not issubclass(origin, str):
        (item,) = typing.get_args(hint)[:1] or (None,)
        inner = _names_user(item)
        if inner is not None:
            return lambda values: (user for value in values for user in inner(value))
    return None


@dataclass(frozen=True)
class MethodSpec:
    """What both ends know of one remote method, derived once from its signature."""

    path: str
    names: tuple[str, ...]  # parameter names in positional order
    params: type[msgspec.Struct]  # decodes `params` (fields UNSET when not sent)
    result: Any  # the type the result is decoded into in the worker
    restores_errors: bool
    any_params: tuple[str, ...]  # parameters typed Any: extension values are rebuilt
    account_params: tuple[tuple[str, Callable[[Any], Iterator[UserId]]], ...]

    def slots(self, params: Mapping[str, Any]) -> list[int]:
        found = {slot_of(user)
                 for name, users in self.account_params
                 if (value := params.get(name)) is not None
                 for user in users(value)}
        return sorted(found)


def method_spec(path: str, function: Callable[..., Any]) -> MethodSpec:
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError) as error:
        raise WireTypeError(f"{path}: unresolvable type hints ({error})") from None
    fields: list[tuple[str, Any, Any]] = []
    names: list[str] = []
    accounts: list[tuple[str, Callable[[Any], Iterator[UserId]]]] = []
    any_params: list[str] = []
    for parameter in list(signature.parameters.values())[1:]:  # after self
        if parameter.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  inspect.Parameter.KEYWORD_ONLY):
            raise WireTypeError(f"{path}: parameter {parameter.name} cannot be sent by name")
        hint = hints.get(parameter.name, Any)
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            names.append(parameter.name)
        fields.append((parameter.name, _wire_type(hint) | msgspec.UnsetType,
                       msgspec.UNSET))
        if hint is Any:
            any_params.append(parameter.name)
        users = _names_user(hint)
        if users is not None:
            accounts.append((parameter.name, users))
    result = hints.get("return", Any)
    try:
        params = msgspec.defstruct(f"{path}.params", fields, forbid_unknown_fields=True)
        msgspec.json.Decoder(params)
        msgspec.json.Decoder(_wire_type(result))
    except TypeError as error:
        raise WireTypeError(f"{path}: {error}") from None
    return MethodSpec(path, tuple(names), params, _wire_type(result),
                      _contains_error(result), tuple(any_params), tuple(accounts))


def remote_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """The public async methods of a facade class: what crosses the socket. A method taking
    `task_status` is a background service the engine runs itself (trio's convention), not a
    call."""
    return {name: member for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and inspect.iscoroutinefunction(member)
            and "task_status" not in inspect.signature(member).parameters}


class Codec:
    """Frames in and out. One per process; the HTTP layer adds its extensions."""

    def __init__(self, extensions: Sequence[Extension] = ()) -> None:
        self._by_type = {extension.kind: extension for extension in extensions}
        self._by_tag = {extension.tag: extension for extension in extensions}
        self._encoder = msgspec.json.Encoder(enc_hook=self._enc_hook)
        self.call_envelope = msgspec.json.Decoder(tuple[int, list[int], str, msgspec.Raw])
        self.reply_envelope = msgspec.json.Decoder(tuple[int, int, msgspec.Raw])
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}

    def _enc_hook(self, value: Any) -> Any:
        if isinstance(value, BillingError):
            return error_to_wire(value)
        extension = self._by_type.get(type(value))
        if extension is not None:
            return {EXTENSION_KEY: extension.tag, "value": extension.to_wire(value)}
        raise NotImplementedError(f"{type(value).__name__} cannot cross the engine socket")

    def frame(self, message: Any) -> bytearray:
        """One frame: header and payload (raises ProtocolError past FRAME_BYTES_MAX)."""
        buffer = bytearray(HEADER.size)
        self._encoder.encode_into(message, buffer, HEADER.size)
        length = len(buffer) - HEADER.size
        if length > FRAME_BYTES_MAX:
            raise ProtocolError(f"a {length}-byte frame exceeds {FRAME_BYTES_MAX} bytes")
        HEADER.pack_into(buffer, 0, length)
        return buffer

    def decoder(self, wire_type: Any) -> msgspec.json.Decoder[Any]:
        decoder = self._decoders.get(wire_type)
        if decoder is None:
            decoder = self._decoders[wire_type] = msgspec.json.Decoder(wire_type)
        return decoder

    def decode_params(self, spec: MethodSpec, raw: msgspec.Raw) -> dict[str, Any]:
        """The keyword arguments of a call (raises msgspec.ValidationError)."""
        decoded = self.decoder(spec.params).decode(raw)
        arguments = {name: value for name in decoded.__struct_fields__
                     if (value := getattr(decoded, name)) is not msgspec.UNSET}
        for name in spec.any_params:
            if name in arguments:
                arguments[name] = self._rebuild(arguments[name])
        return arguments

    def _rebuild(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 2 and EXTENSION_KEY in value:
            extension = self._by_tag.get(value[EXTENSION_KEY])
            if extension is not None:
                return extension.from_wire(value["value"])
        return value

    def decode_result(self, spec: MethodSpec, raw: msgspec.Raw) -> Any:
        result = self.decoder(spec.result).decode(raw)
        return restore_errors(result) if spec.restores_errors else result


class Framer:
    """Splits a byte stream into frame payloads; every complete frame of a read at once."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, offset)
            if length > FRAME_BYTES_MAX:
                raise ProtocolError(f"a {length}-byte frame exceeds {FRAME_BYTES_MAX} bytes")
            end = offset + HEADER.size + length
            if end > len(buffer):
                break
            frames.append(bytes(buffer[offset + HEADER.size:end]))
            offset = end
        del buffer[:offset]
        return frames
