"""The live diff of one worker: the comparator for the current config, kept across reloads.

A reload that changes nothing diffing depends on keeps the comparator (and its pending
pairs); one that does retires the old comparator after RETIRE_AFTER, so the requests
that started with it still get compared. The results (DiffStore) outlive every reload.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastmirror.config import Config
from fastmirror.ops.metrics import Registry

if TYPE_CHECKING:
    from fastmirror.diffing.comparator import Comparator
    from fastmirror.diffing.diffstore import DiffStore


class Diffing:
    """The comparator of the current config and the results that outlive reloads."""

    # A reload keeps the old comparator running this long for the requests that
    # started with it (a little over the default shadow and primary timeouts).
    RETIRE_AFTER = 30.0

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store: DiffStore | None = None
        self.comparator: Comparator | None = None
        self._key: tuple[Any, ...] | None = None

    def comparator_for(self, config: Config) -> Comparator | None:
        """The comparator for config: the current one if nothing it depends on changed."""
        if not config.diff.enabled:
            self._retire()
            self._key = None
            return None
        key = (config.diff, config.shadow, config.secondary)
        if key == self._key and self.comparator is not None:
            return self.comparator
        from fastmirror.diffing.comparator import Comparator   # only with diffing on
        from fastmirror.diffing.diffstore import DiffStore
        from fastmirror.ops.logs import DiffLog

        if self.store is None:
            self.store = DiffStore()
            self.registry.diff_source = self.store.counts
        self._retire()
        diff_log = DiffLog(config.diff.log, config.diff.log_max_bytes) if config.diff.log else None
        self.comparator = Comparator(
            config.diff, [str(a) for a in config.shadow], config.secondary is not None,
            self.store, diff_log,
            max_age=config.shadow_timeout + config.primary_timeout + 5)
        self._key = key
        return self.comparator

    def snapshot(self) -> dict[str, Any]:
        return self.store.snapshot() if self.store is not None else {"upstreams": {}}

    def sweep(self, now: float) -> None:
        if self.comparator is not None:
            self.comparator.sweep(now)

    def _retire(self) -> None:
        old, self.comparator = self.comparator, None
        if old is not None:
            asyncio.get_running_loop().call_later(self.RETIRE_AFTER, old.close, False)

    def close(self) -> None:
        if self.comparator is not None:
            self.comparator.close()
            self.comparator = None
