"""Where bytes that protobuf refused are broken: a diagnosis for the quarantine table.

upb says only "Wire format was corrupt" or "String field had bad UTF-8"; walking the
bytes again (on that rare path only) says where, which is what a reader of the
quarantine table needs. A small protobuf wire-format walker follows the schema (so
that it knows which length-delimited fields are strings that must be UTF-8 and which
are messages to descend into) and reports the first problem it finds. It is only a
diagnosis: when it finds nothing, the parser's own words are used. Fuzzed against
upb, the two agree on which inputs are broken, including its limits (32-bit tags,
10-byte varints, nesting depth).
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

__all__ = ["find_corruption"]

_MAX_DEPTH = 100  # upb's default recursion limit
_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_BYTES = 2
_WIRE_GROUP_START = 3
_WIRE_GROUP_END = 4
_WIRE_FIXED32 = 5


def find_corruption(data: bytes, message: Descriptor) -> str | None:
    """The first problem in `data` read as `message`, or None if the walk finds none."""
    walked = _walk(data, 0, len(data), message)
    return walked if isinstance(walked, str) else None


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """(value, position after it), or None if truncated or longer than 10 bytes."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    return None


def _walk(
    data: bytes,
    pos: int,
    end: int,
    message: Descriptor | None,
    *,
    path: str = "",
    group: int = 0,
    depth: int = 0,
) -> str | int:
    """The first problem in data[pos:end] read as `message` (None: all fields unknown).

    Without a problem, the position where the walk ended: `end`, or just after the end tag
    of `group` when reading the contents of a group.
    """
    if depth > _MAX_DEPTH:
        return f"nesting deeper than {_MAX_DEPTH} at byte {pos}"
    fields = message.fields_by_number if message is not None else {}
    seen: dict[int, int] = {}
    while pos < end:
        start = pos
        key = _read_varint(data, pos, end)
        if key is None or key[1] - start > 5:  # a tag is a 32-bit varint
            return f"truncated or overlong tag at byte {start}"
        tag, pos = key
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or number >= 2**29:
            return f"invalid field number {number} at byte {start}"
        field = fields.get(number)
        name = _field_path(path, field, number, seen)
        if wire_type == _WIRE_GROUP_START:
            walked = _walk(data, pos, end, None, path=name, group=number, depth=depth + 1)
        elif wire_type == _WIRE_GROUP_END:
            if number == group:
                return pos
            return f"unmatched end-group tag for {name} at byte {start}"
        else:
            walked = _skip_value(data, pos, end, wire_type, field, name, start, depth)
        if isinstance(walked, str):
            return walked
        pos = walked
    if group:
        return f"unterminated group {path}"
    return pos


def _skip_value(
    data: bytes,
    pos: int,
    end: int,
    wire_type: int,
    field: FieldDescriptor | None,
    name: str,
    start: int,
    depth: int,
) -> str | int:
    """The first problem in the value of a field whose tag ended at `pos`, or where it ends."""
    if wire_type == _WIRE_VARINT:
        value = _read_varint(data, pos, end)
        if value is None:
            return f"truncated or overlong varint in {name} at byte {start}"
        return value[1]
    if wire_type in (_WIRE_FIXED64, _WIRE_FIXED32):
        pos += 8 if wire_type == _WIRE_FIXED64 else 4
        if pos > end:
            return f"truncated {name} at byte {start}"
        return pos
    if wire_type == _WIRE_BYTES:
        length = _read_varint(data, pos, end)
        if length is None:
            return f"truncated or overlong length of {name} at byte {start}"
        size, pos = length
        if size > end - pos:
            return f"truncated {name} at byte {start}: needs {size} bytes, {end - pos} left"
        problem = _check_field(data, pos, pos + size, field, name=name, depth=depth)
        return problem if problem is not None else pos + size
    return f"invalid wire type {wire_type} in {name} at byte {start}"


def _field_path(path: str, field: FieldDescriptor | None, number: int, seen: dict[int, int]) -> str:
    if field is None:
        return f"{path}.{number}" if path else f"field {number}"
    name = f"{path}.{field.name}" if path else field.name
    if field.is_repeated:
        index = seen.get(number, 0)
        seen[number] = index + 1
        name = f"{name}[{index}]"
    return name


def _check_field(
    data: bytes, pos: int, end: int, field: FieldDescriptor | None, *, name: str, depth: int
) -> str | None:
    """The first problem in the payload of a length-delimited field."""
    if field is None:
        return None  # unknown: opaque bytes
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            data[pos:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"invalid UTF-8 in {name} at byte {pos + exc.start}"
        return None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        walked = _walk(data, pos, end, field.message_type, path=name, depth=depth + 1)
        return walked if isinstance(walked, str) else None
    return None
