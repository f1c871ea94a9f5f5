"""What the fact extractor read from one resource object, kept for the next call that sends it.

The validation memo (service/fhir/intake.ValidatedModels) hands back the same immutable object for
byte-identical JSON, so an EHR re-sending a patient's results on every chart open gives the
extractor the same objects again. What it derives from one of them (a lab result judged against
its range, the answers of a QuestionnaireResponse, the facts a medicine gives) depends only on
that object, its path in the request, the patient's sex and the day: kept under those, it is read
once instead of per call.

It is kept in the validation memo's own entry for the object (`ValidatedModels.derived`), so it
lives exactly as long as the object is kept there and under the same bounds (entries, bytes, no
huge resource); an object the memo does not keep is read afresh every time. Everything kept is
immutable (frozen dataclasses, tuples).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = object()
# Keys per object: one resource is normally read under one path, sex and day; a resource read
# under many (sent at other positions, on other days) starts over rather than grow.
MAX_KEYS_PER_OBJECT = 4


class ResourceMemo:
    """Derived reads per (resource object, kind, key), stored where `room_for` says."""

    def __init__(self, room_for: Callable[[Any], dict[Hashable, Any] | None] | None) -> None:
        self._room_for = room_for
        self.hits = 0
        self.misses = 0

    def read(self, resource: Any, kind: str, key: Hashable, compute: Callable[..., T], *args: Any) -> T:
        """What `compute(*args)` gave for this object, kind and key; computed on a miss."""
        room = self._room_for(resource) if self._room_for is not None else None
        if room is None:
            return compute(*args)
        slot = (kind, key)
        kept = room.get(slot, _MISSING)
        if kept is not _MISSING:
            self.hits += 1
            value: T = kept
            return value
        self.misses += 1
        value = compute(*args)
        if len(room) >= MAX_KEYS_PER_OBJECT:
            room.clear()
        room[slot] = value
        return value
