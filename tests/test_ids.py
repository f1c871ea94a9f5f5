"""Buffered random ids: version-4 and time-ordered version-7 UUIDs, unrepeated, not shared across a fork."""

from __future__ import annotations

import os
import time
import uuid

from service.ids import _version_7, new_hex, new_ordered_hex, new_ordered_uuid_text, new_uuid, new_uuid_text


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
    ordered = {new_ordered_hex() for _ in range(20_000)}
    assert len(ordered) == 20_000


def test_the_version_7_layout_matches_rfc_9562s_example() -> None:
    # RFC 9562 Appendix A.6: unix_ts_ms 0x017F22E279B0, rand_a 0xCC3, rand_b 0x18C4DC0C0C07398F.
    made = _version_7(0x017F22E279B0, bytes.fromhex("0CC318C4DC0C0C07398F"))
    assert str(made) == "017f22e2-79b0-7cc3-98c4-dc0c0c07398f"
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    # All ones: the version and variant bits must be masked in, not only or-ed.
    assert str(_version_7(0xFFFFFFFFFFFF, b"\xff" * 10)) == "ffffffff-ffff-7fff-bfff-ffffffffffff"


def test_ordered_ids_carry_the_time_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    first = uuid.UUID(new_ordered_uuid_text())
    time.sleep(0.002)
    second = uuid.UUID(hex=new_ordered_hex())
    after = time.time_ns() // 1_000_000
    for made in (first, second):
        assert made.version == 7
        assert made.variant == uuid.RFC_4122
        assert before <= made.int >> 80 <= after
    assert first.hex < second.hex  # the index key order is the issue order, millisecond by millisecond


def test_a_forked_child_does_not_hand_out_the_parents_buffered_ids() -> None:
    new_hex()  # the parent now holds a part-used batch that a child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit without running the parent's cleanup
        os.close(read)
        os.write(write, "".join(new_hex() if i % 2 else new_ordered_hex() for i in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(new_hex() if i % 2 else new_ordered_hex() for i in range(8))
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == 8
    assert not child_ids & parent_ids
