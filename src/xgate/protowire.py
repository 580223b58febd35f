"""Protobuf wire format, the little xgate writes by hand: length-delimited fields joined as bytes.

Used where re-serializing would copy megabytes per change: a route table assembled from per-route pieces,
and a DiscoveryResponse assembled from resources serialized once for every proxy. Deterministic
serialization writes fields in number order and a repeated field as its elements one after another, so
these joins equal SerializeToString(deterministic=True) (tests compare the bytes).
"""

from __future__ import annotations


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_head(field_number: int, length: int) -> bytes:
    """The tag and length of a length-delimited field; its `length` bytes of payload follow. For joining a
    big message from its parts in one copy instead of wrapping (and so copying) it once per level."""
    return varint(field_number << 3 | 2) + varint(length)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (bytes, string, message, or one element of a repeated one)."""
    return field_head(field_number, len(payload)) + payload


def string_field(field_number: int, text: str) -> bytes:
    """A string field; proto3 leaves an empty one out."""
    return length_delimited(field_number, text.encode()) if text else b""
