"""Buffered random ids: valid version-4 UUIDs, never repeated, not shared across a fork."""

from __future__ import annotations

import os
import uuid

from service.ids import new_hex, new_uuid, new_uuid_text


def test_ids_are_version_4_rfc_4122_uuids() -> None:
    for _ in range(200):
        made = new_uuid()
        assert made.version == 4
        assert made.variant == uuid.RFC_4122
    assert uuid.UUID(new_uuid_text()).version == 4
    assert len(new_hex()) == 32


def test_ids_do_not_repeat_across_many_batches() -> None:
    made = {new_hex() for _ in range(20_000)}
    assert len(made) == 20_000


def test_a_forked_child_does_not_hand_out_the_parents_buffered_ids() -> None:
    new_hex()  # the parent now holds a part-used batch that a child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit without running the parent's cleanup
        os.close(read)
        os.write(write, "".join(new_hex() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(new_hex() for _ in range(8))
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == 8
    assert not child_ids & parent_ids
