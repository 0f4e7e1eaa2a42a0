"""Batches collated ahead: the next update's batches are built on a background thread
while the current update runs, so the GPU does not wait for the host between steps.

Plain twin: collating each update's batches when it starts (`train_step` without
`batches`). The batches are the same ones in the same order, so training gives the same
weights and resume stays exact (tests/training/test_prefetch.py). Switched on at one
point, `loop.setup` (`train.prefetch`; auto = on CUDA, where the batches are also pinned
so that their copies to the GPU run asynchronously).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

import torch

Group = Sequence[torch.Tensor]  # one update's micro-batches, as split indices


def _same(a: Group, b: Group) -> bool:
    return len(a) == len(b) and all(x is y or torch.equal(x, y) for x, y in zip(a, b, strict=True))


class Prefetcher:
    """`collate(group)` for the group asked for next, computed ahead on one worker thread.

    `ahead(group)` starts the work; `take(group)` returns it if it was that group, and
    otherwise collates `group` now. A wrong guess costs time, never a different batch.
    """

    def __init__(self, collate: Callable[[Group], list[Any]]) -> None:
        self.collate = collate
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tfx-collate")
        self.pending: tuple[Group, concurrent.futures.Future] | None = None

    def ahead(self, group: Group) -> None:
        if group:
            self.pending = (group, self.pool.submit(self.collate, group))

    def take(self, group: Group) -> list[Any]:
        pending, self.pending = self.pending, None
        if pending is not None and _same(pending[0], group):
            return pending[1].result()
        return self.collate(group)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
