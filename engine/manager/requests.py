"""What mobility services send to the management port, checked field by field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import ProtocolError
from engine.records import Disk

MAX_DISKS = 64
_MAX_TEXT = 256


def _text(data: dict[str, Any], key: str, *, max_len: int = _MAX_TEXT, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ProtocolError(f"Field {key!r} must be a non-empty string.")
    if len(value) > max_len or not value.isprintable():
        raise ProtocolError(f"Field {key!r} must be printable text of at most {max_len} characters.")
    return value.strip()


def _disks(data: dict[str, Any]) -> tuple[Disk, ...]:
    raw = data.get("disks")
    if not isinstance(raw, list) or len(raw) > MAX_DISKS:
        raise ProtocolError(f"Field 'disks' must be a list of at most {MAX_DISKS} disks.")
    disks = []
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError("Each disk must be an object with 'path' and 'size'.")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**63:
            raise ProtocolError("A disk's 'size' must be a non-negative integer of bytes.")
        disks.append(Disk(path=_text(item, "path", max_len=4096), size=size))
    return tuple(disks)


@dataclass(frozen=True)
class ServerFacts:
    """What a source server says about itself in every registration and heartbeat."""

    hostname: str
    os: str
    agent_version: str
    disks: tuple[Disk, ...]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ServerFacts:
        return cls(hostname=_text(data, "hostname"), os=_text(data, "os"),
                   agent_version=_text(data, "agent_version", max_len=64), disks=_disks(data))


@dataclass(frozen=True)
class Registration:
    passphrase: str
    csr: str
    name: str
    facts: ServerFacts

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Registration:
        name = _text(data, "name", max_len=63)
        if any(c in name for c in "/\\") or name.startswith("."):
            raise ProtocolError("A server name may not contain '/' or '\\' or start with '.'.")
        return cls(passphrase=_text(data, "passphrase", max_len=128), csr=_text_block(data, "csr"), name=name,
                   facts=ServerFacts.parse(data))


def _text_block(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 8192:
        raise ProtocolError(f"Field {key!r} must be a PEM block of at most 8 KiB.")
    return value
