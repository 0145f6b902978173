"""Event ids are UUIDv7 (RFC 9562): time-ordered at millisecond grain, random below it."""

import time
import uuid

from shared.events import new_event_id, uuid7


def test_the_fields_are_where_rfc_9562_puts_them():
    ms = 0x0123_4567_89AB
    got = uuid7(ms, bytes(range(1, 11)))
    assert got.version == 7 and got.variant == uuid.RFC_4122
    assert got.int >> 80 == ms
    # rand_a is the 12 low bits of the first 16 random bits; rand_b the low 62 bits of the rest.
    assert (got.int >> 64) & 0xFFF == 0x0102 & 0xFFF
    assert got.int & ((1 << 62) - 1) == int.from_bytes(bytes(range(3, 11)), "big") & ((1 << 62) - 1)


def test_a_new_id_carries_the_current_millisecond_and_sorts_after_an_older_one():
    before = time.time_ns() // 1_000_000
    first = new_event_id()
    after = time.time_ns() // 1_000_000
    assert before <= first.int >> 80 <= after and first.version == 7
    time.sleep(0.002)
    assert new_event_id() > first


def test_ids_made_in_the_same_millisecond_differ():
    ids = {uuid7(1_700_000_000_000) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_ids_drawn_across_many_refills_of_the_random_pool_all_differ():
    # 10 bytes an id, 4 KiB a refill: 5,000 ids take the pool through a dozen refills.
    ids = {uuid7(1_700_000_000_000) for _ in range(5_000)}
    assert len(ids) == 5_000


def test_a_forked_child_draws_other_random_bytes_than_its_parent():
    import os

    new_event_id()  # the parent's pool holds bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then gone
        os.write(write, new_event_id().bytes)
        os._exit(0)
    os.close(write)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    parent = new_event_id()
    # The random bits (all but the 48-bit millisecond and the version/variant bits) differ.
    random_bits = ((1 << 80) - 1) & ~(0xF << 76) & ~(0b11 << 62)
    assert child.int & random_bits != parent.int & random_bits


def test_threads_drawing_ids_at_once_never_get_the_same_one():
    # A repeated id would be skipped as a duplicate by every consumer: its event lost. Switching
    # threads every microsecond makes a race in the shared random pool show at once.
    import sys
    import threading

    drawn: list[list[uuid.UUID]] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [
            threading.Thread(target=lambda: drawn.append([new_event_id() for _ in range(20_000)])) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    ids = [i for batch in drawn for i in batch]
    assert len(ids) == 160_000 and len(set(ids)) == 160_000
