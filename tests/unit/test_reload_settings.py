"""A reload builds new Settings from the new config: targets it keeps (same role and
address, so their pools, queues and counters live on) get exactly what a new one would.

Regression tests for two reload bugs: a kept secondary got none of the reload's updates,
and kept shadows kept the old connect timeout.
"""

from __future__ import annotations

from typing import Any

from fastmirror.config import load_config
from fastmirror.ops.metrics import Registry
from fastmirror.proxy.context import Settings
from fastmirror.proxy.shadow import ShadowTarget

SHADOW = "127.0.0.1:2"
SECONDARY = "127.0.0.1:3"
COMPARATOR = object()   # Settings only asks whether there is one


def settings(registry: Registry, previous: Settings | None = None, **values: Any) -> Settings:
    base: dict[str, Any] = {"primary": "127.0.0.1:1", "shadow": [SHADOW],
                            "secondary": SECONDARY, "diff": {"enabled": True}}
    config = load_config(None, {**base, **values})
    return Settings(config, registry, config.mirror_percent, previous=previous,
                    comparator=COMPARATOR)


def tunables(target: ShadowTarget) -> tuple[Any, ...]:
    return (target.queue.maxsize, target.concurrency, target.timeout, target.capture_limit,
            target.pool.connect_timeout, target.pool.max_idle)


def test_kept_targets_get_the_new_settings_as_new_ones_would() -> None:
    registry = Registry()
    old = settings(registry)
    changed = dict(queue_size=7, shadow_concurrency=3, shadow_timeout=4.0, connect_timeout=0.5,
                   diff={"enabled": True, "max_body": 999})
    new = settings(registry, old, **changed)
    fresh = settings(Registry(), None, **changed)
    assert new.shadows[0] is old.shadows[0] and new.secondary is old.secondary   # kept
    assert tunables(new.shadows[0]) == tunables(fresh.shadows[0]) == (7, 3, 4.0, 999, 0.5, 3)
    assert tunables(new.secondary) == tunables(fresh.secondary)
    assert new.secondary.part_name == "secondary" and new.secondary.role == "secondary"
    assert new.retired == []


def test_targets_the_new_config_drops_are_retired() -> None:
    registry = Registry()
    old = settings(registry)
    new = settings(registry, old, shadow=["127.0.0.1:4"], secondary=None,
                   diff={"enabled": False})
    assert new.secondary is None and new.shadows[0] is not old.shadows[0]
    assert set(new.retired) == {old.shadows[0], old.secondary}


def test_a_shadow_that_becomes_the_secondary_is_a_new_target() -> None:
    """Role and address make a target: the secondary's stats are labelled "secondary"."""
    registry = Registry()
    old = settings(registry)
    new = settings(registry, old, shadow=[SECONDARY], secondary=SHADOW)
    assert new.shadows[0] is not old.secondary and new.secondary is not old.shadows[0]
    assert new.shadows[0].role == "shadow" and new.secondary.role == "secondary"
