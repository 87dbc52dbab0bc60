"""The contracts between Godwit's programs, one module per link.

Programs on the two ends of a link run at different versions: appliance agents update one by one,
source servers later than the appliance. So every message that crosses a process boundary is a
frozen dataclass defined once, in the module of its link, and every link carries its protocol
version (:class:`Link`) in the ``Godwit-Protocol`` header of each request and answer:

- :mod:`engine.links.management` — mobility service ↔ replication-manager (management port)
- :mod:`engine.links.data` — mobility service ↔ process-server (data port; the batch body itself
  is the binary format of :mod:`engine.protocol`, which has its own magic)
- :mod:`engine.links.agent` — appliance agents ↔ engine supervisor (``run/agent.sock``)
- :mod:`engine.links.admin` — CLI and console ↔ engine (``admin.sock``), with its push stream

The versioning rule (docs/agent-link.md): a version is MAJOR.MINOR. A minor version only adds
optional fields (with defaults) or new message types; a peer ignores fields and stream messages it
does not know. Anything else is a new major version, and a peer refuses a major version other than
its own with one line that names both (:class:`~engine.errors.VersionMismatch`). A message without
the header is from before versions were carried: 1.0.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.errors import ProtocolError, VersionMismatch
from engine.records import from_json, to_json, type_hints

#: The header that carries ``<link>/<major>.<minor>`` on every request and answer.
HEADER = "Godwit-Protocol"
_VERSION = re.compile(r"^([a-z-]{1,32})/(\d{1,4})\.(\d{1,4})$")
M = TypeVar("M")


@dataclass(frozen=True)
class Link:
    """One link's protocol and the version this program speaks."""

    name: str
    major: int
    minor: int
    #: How the admin knows this link, for messages ("management protocol").
    title: str

    def __str__(self) -> str:
        return f"{self.name}/{self.major}.{self.minor}"

    @property
    def headers(self) -> dict[str, str]:
        """What a request or an answer on this link carries."""
        return {HEADER: str(self)}

    def check(self, value: str | None, *, peer: str = "The other side") -> tuple[int, int]:
        """The peer's version from its header (``None``: 1.0). Raises :class:`VersionMismatch` for a
        major version other than ours, :class:`ProtocolError` for a header that is not a version of
        this link. A newer minor version is accepted: its extra fields are ignored."""
        if value is None:
            major, minor = 1, 0
        else:
            match = _VERSION.match(value.strip())
            if match is None or match.group(1) != self.name:
                raise ProtocolError(f"{peer} sent {HEADER}: {value[:64]!r}, not a version of the {self.title}.")
            major, minor = int(match.group(2)), int(match.group(3))
        if major != self.major:
            older = "this program" if major > self.major else "the other side"
            raise VersionMismatch(f"{peer} speaks {self.title} {major}.{minor}; this program speaks "
                                  f"{self.major}.{self.minor}. Update {older} so that both speak the same major "
                                  "version.")
        return major, minor


def encode(message: Any) -> Any:
    """A message (or a list of them) as plain JSON values: the one serialiser of every link."""
    return to_json(message)


def decode(cls: type[M], data: Any, *, link: Link) -> M:
    """A message from JSON values. Unknown fields are ignored (a newer minor version); a missing
    required field or a value of the wrong shape is a :class:`ProtocolError`."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{cls.__name__} on the {link.title} must be a JSON object.")
    try:
        message = from_json(cls, data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        required = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                    and f.name not in data]
        what = f"lacks {', '.join(required)}" if required else "has a field of the wrong type"
        raise ProtocolError(f"{cls.__name__} on the {link.title} {what}.") from exc
    wrong = _wrongly_typed(message)
    if wrong:
        raise ProtocolError(f"{cls.__name__} on the {link.title}: field {wrong} has the wrong type.")
    return message


def _wrongly_typed(message: Any, prefix: str = "") -> str | None:
    """The dotted name of the first field whose value is not of its declared type, or None."""
    hints = type_hints(type(message))
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        name = f"{prefix}{f.name}"
        if not _fits(hints[f.name], value):
            return name
        if dataclasses.is_dataclass(value):
            if (inner := _wrongly_typed(value, f"{name}.")) is not None:
                return inner
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item) and (inner := _wrongly_typed(item, f"{name}[{i}].")) is not None:
                    return inner
    return None


def _fits(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return isinstance(value, tuple) and all(_fits(item, v) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp | str)  # a member this version does not know stays a string
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True
