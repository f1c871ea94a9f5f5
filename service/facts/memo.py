"""What the fact extractor read from one resource object, kept for the next call that sends it.

The validation memo (service/fhir/intake.ValidatedModels) hands back the same immutable object for
byte-identical JSON, so an EHR re-sending a patient's results on every chart open gives the
extractor the same objects again. What it derives from one of them (a lab result judged against
its range, the answers of a QuestionnaireResponse) depends only on that object, its path in the
request, the patient's sex and the day: kept under those, it is read once instead of per call.

Entries are keyed by the object's identity and hold the object itself, so an identity is never
reused while its entry lives; everything kept is immutable (frozen dataclasses, tuples). Bounded
by entries, oldest first out; an object the validation memo no longer keeps simply misses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class ResourceMemo:
    """Derived reads per (resource object, kind), valid for one (path, sex, day) key."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[int, str], tuple[Any, Hashable, Any]] = {}
        self._lock = threading.Lock()  # gthread workers share one extractor
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def read(self, resource: Any, kind: str, key: Hashable, compute: Callable[..., T], *args: Any) -> T:
        """What `compute(*args)` gave for this object, kind and key; computed on a miss."""
        if self.max_entries <= 0:
            return compute(*args)
        slot = (id(resource), kind)
        entry = self._entries.get(slot)
        if entry is not None and entry[0] is resource and entry[1] == key:
            self.hits += 1
            value: T = entry[2]
            return value
        self.misses += 1
        value = compute(*args)
        with self._lock:
            self._entries.pop(slot, None)  # re-inserted last: a key change renews its place
            self._entries[slot] = (resource, key, value)
            while len(self._entries) > self.max_entries:
                del self._entries[next(iter(self._entries))]
        return value

    def clear(self) -> None:
        """Forget everything (the validation memo was cleared)."""
        with self._lock:
            self._entries.clear()
