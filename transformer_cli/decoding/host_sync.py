"""When the searches read the device: the "who finished?" check, once every k steps.

Greedy search learns which sentences have finished by reading their newest pieces (or a
flag per row) back to the host. On a GPU each read waits until every queued kernel has
run, so the host cannot queue step t + 1 while the GPU computes step t, and a small
step leaves the GPU idle for most of its time. Checking every k steps instead lets the
host queue k steps at once; a sentence that finished in between keeps decoding until the
check, and what it emits after its EOS is cut. Rows never read each other (attention,
the layer norms and the output projection are all per row), so the outputs are the same
for every k, and the extra work is bounded: at most k - 1 steps per sentence
(docs/performance.md, "Checking for finished sentences every k steps").
"""

from __future__ import annotations

import torch
from torch import Tensor

AUTO = 0  # decode.sync_every's "pick by device"
ACCELERATOR_SYNC_EVERY = 8  # k on a device with an asynchronous queue (CUDA, MPS)


def sync_every_for(setting: int, device: torch.device) -> int:
    """`decode.sync_every` for `device`: auto (0) is 1 on the CPU, 8 on an accelerator.

    On the CPU a read costs nothing (there is no queue to drain) and every extra step
    costs arithmetic, so the check is made at every step there.
    """
    if setting < 0:
        raise ValueError(f"sync_every must be >= 0, got {setting}")
    if setting != AUTO:
        return setting
    return 1 if device.type == "cpu" else ACCELERATOR_SYNC_EVERY


def checked(sync_every: int) -> int:
    """A search's `sync_every`, which must be a resolved k >= 1."""
    if sync_every < 1:
        raise ValueError(f"sync_every must be >= 1, got {sync_every}")
    return sync_every


def to_host(t: Tensor) -> Tensor:
    """`t` on the host: the one way the searches read the device between steps.

    On CUDA this waits for the GPU; tests count its calls.
    """
    return t.cpu()
