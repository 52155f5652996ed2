"""Request decoding for gRPC servers that answers bad bytes with INVALID_ARGUMENT.

proto3 refuses a string field holding invalid UTF-8 while parsing, before any servicer code runs,
and grpc-python then answers INTERNAL "Exception deserializing request". ``lenient_deserializer``
returns an ``Undecodable`` marker instead, naming the broken field by its path
(``messages[2].content``), and ``voiceai.serving.rpc`` turns the marker into INVALID_ARGUMENT with
that message, a log line and a metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request protobuf refused to parse; the servicer turns it into an error."""

    reason: str
    message: str


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def invalid_utf8_field(data: bytes, descriptor: Descriptor, prefix: str = "") -> str | None:
    """Path of the first string field (nested messages included) whose bytes are not UTF-8.

    Walks the wire format (tag, then varint / fixed / length-delimited value) just far enough to
    tell which field broke parsing, so that the error can say so.
    """
    counts: dict[int, int] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _read_varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                size, pos = _read_varint(data, pos)
                if pos + size > len(data):
                    return None  # truncated: broken for another reason
                value, pos = data[pos:pos + size], pos + size
                fd = descriptor.fields_by_number.get(number)
                if fd is None:
                    continue
                index = counts.get(number, 0)
                counts[number] = index + 1
                name = f"{prefix}{fd.name}[{index}]" if fd.is_repeated else f"{prefix}{fd.name}"
                if fd.type == FieldDescriptor.TYPE_STRING:
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        return name
                elif fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type is not None:
                    found = invalid_utf8_field(value, fd.message_type, name + ".")
                    if found:
                        return found
            else:
                return None  # groups are not used by our contracts
    except ValueError:
        return None
    return None


def lenient_deserializer(message_cls: Any) -> Callable[[bytes], Any]:
    """A request deserializer that returns ``Undecodable`` instead of raising."""

    def deserialize(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except DecodeError:
            field = invalid_utf8_field(data, message_cls.DESCRIPTOR)
            if field:
                return Undecodable("invalid_utf8", f"field '{field}' is not valid UTF-8; "
                                                   "send text encoded as UTF-8")
            return Undecodable("undecodable_request",
                               f"the request is not a valid {message_cls.DESCRIPTOR.full_name}")

    return deserialize
