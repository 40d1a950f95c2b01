"""The collector is paused while a configuration loads, and long-lived objects are frozen."""

from __future__ import annotations

import gc
import threading
import weakref

from sts.gcpolicy import collector_paused, freeze_long_lived


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_paused_block_restores_the_previous_state_and_nests() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer block still holds the pause
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


def test_paused_block_re_enables_after_an_error() -> None:
    try:
        with collector_paused():
            raise ValueError("load failed")
    except ValueError:
        pass
    assert gc.isenabled()


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_freeze_collects_garbage_first_and_unfreezes_what_was_frozen_before() -> None:
    try:
        before = _cycle()  # cyclic garbage: only the collector can free it
        kept = Node()
        freeze_long_lived()
        assert before() is None  # collected, not frozen
        assert gc.get_freeze_count() > 0
        # A cycle that was alive at one freeze and dropped later is freed at the next one.
        a, b = Node(), Node()
        a.other, b.other = b, a
        later = weakref.ref(a)
        freeze_long_lived()
        del a, b
        gc.collect()
        assert later() is not None  # frozen: invisible to collections
        freeze_long_lived()
        assert later() is None
        assert kept.other is None
    finally:
        gc.unfreeze()


def test_overlapping_pauses_in_two_threads_end_with_the_last() -> None:
    # A reload loads in a worker thread while the loop thread may pause too: the first block
    # to end must not turn the collector back on under the other.
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with collector_paused():
            entered.set()
            release.wait(5)

    with collector_paused():
        worker = threading.Thread(target=other)
        worker.start()
        assert entered.wait(5)
    assert not gc.isenabled()  # the worker's block is still open
    release.set()
    worker.join(5)
    assert gc.isenabled()
