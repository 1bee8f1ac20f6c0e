"""The service's collector settings: what exists at start is frozen, young collections rarer."""

from __future__ import annotations

import gc

from defender_agent.cli.service import settle_gc


def test_settle_gc_freezes_what_exists_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        kept = [[i] for i in range(100)]  # long-lived containers, tracked by the collector
        settle_gc()
        assert gc.get_freeze_count() >= len(kept)
        young, middle, old = gc.get_threshold()
        assert young == 20_000 and (middle, old) == before[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
