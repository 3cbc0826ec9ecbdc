"""Metadata stored verbatim with an entry, a usage event or a reservation: a JSON object.

The original service stores any JSON a caller sends; ours stores any JSON object within a
stated size: values are strings (at most METADATA_VALUE_LENGTH_MAX characters), numbers,
booleans, null, and arrays or objects of those nested at most METADATA_DEPTH_MAX levels
(the top object is level 1), each with at most METADATA_ENTRIES_MAX members, and object keys
of 1 … METADATA_KEY_LENGTH_MAX characters. `/openapi.json` states the same rules
(api/schemas.py), and a request body is at most MAX_BODY_BYTES on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import InvalidInput

METADATA_ENTRIES_MAX = 32
METADATA_VALUE_LENGTH_MAX = 512
METADATA_KEY_LENGTH_MAX = 64
METADATA_DEPTH_MAX = 3


def validate_metadata(metadata: object) -> dict[str, Any]:
    """The metadata as given (a plain dict), or InvalidInput naming what breaks the rules."""
    if type(metadata) is dict and not metadata:
        return {}  # most events carry none: skip the abstract-class check
    if not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be an object", {"field": "metadata"})
    _check(metadata, "metadata", 1)
    return dict(metadata)


def _check(value: object, field: str, depth: int) -> None:
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        if len(value) > METADATA_VALUE_LENGTH_MAX:
            raise InvalidInput(f"metadata strings are at most {METADATA_VALUE_LENGTH_MAX} "
                               "characters", {"field": field})
        return
    if not isinstance(value, Mapping | list | tuple):
        raise InvalidInput("metadata holds JSON values only", {"field": field})
    if depth > METADATA_DEPTH_MAX:
        raise InvalidInput(f"metadata nests at most {METADATA_DEPTH_MAX} levels",
                           {"field": field})
    if len(value) > METADATA_ENTRIES_MAX:
        raise InvalidInput(f"metadata objects and arrays hold at most {METADATA_ENTRIES_MAX} "
                           "members", {"field": field})
    if isinstance(value, Mapping):
        for name, member in value.items():
            if not isinstance(name, str) or not 0 < len(name) <= METADATA_KEY_LENGTH_MAX:
                raise InvalidInput(f"metadata keys are strings of 1..{METADATA_KEY_LENGTH_MAX}"
                                   " characters", {"field": field})
            _check(member, f"{field}.{name}", depth + 1)
    else:
        for index, member in enumerate(value):
            _check(member, f"{field}[{index}]", depth + 1)
