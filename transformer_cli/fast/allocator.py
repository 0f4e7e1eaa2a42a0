"""Host memory for training: jemalloc where the system has it, a tuned glibc otherwise.

Every training batch has its own shapes, so every step allocates its own mix of block
sizes. glibc's heap fragments under that mix, growing with free blocks that no later
request fits; jemalloc sorts blocks into size classes and reuses them. So `tfx train`
runs itself again under jemalloc when the library is installed (Debian/Ubuntu: `apt
install libjemalloc2`) and TFX_ALLOCATOR is not `system`. This module imports no torch:
the switch happens first. The measurements behind these choices: docs/performance.md,
section "The allocator (fast/allocator.py)".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping

ENV = "TFX_ALLOCATOR"  # auto (default): jemalloc when installed; system: never switch
# Freed pages stay with the process (decay -1): handing them back means the next step
# faults them in again, zeroed. oversize_threshold 0: big blocks share the size-classed
# arenas instead of one that returns them at once.
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
ONEDNN_PRIMITIVE_CACHE = 64  # see tune_cpu_memory


def jemalloc_env(
    environ: Mapping[str, str],
    platform: str = sys.platform,
    find_library: Callable[[str], str | None] = ctypes.util.find_library,
) -> dict[str, str] | None:
    """The environment to run this process again under jemalloc, or None to stay as it is.

    None off Linux, with TFX_ALLOCATOR=system, when jemalloc is already preloaded (which
    is also how the second run knows not to switch again), or when it is not installed.
    A MALLOC_CONF the user set is kept.
    """
    if not platform.startswith("linux") or environ.get(ENV, "auto") == "system":
        return None
    preload = environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload:
        return None
    lib = find_library("jemalloc")
    if lib is None:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{lib}:{preload}" if preload else lib
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def use_jemalloc() -> None:
    """Replace this process by the same command under jemalloc, when `jemalloc_env` says so.

    Returns only when it does not switch (or the exec fails: the run goes on as it is).
    """
    env = jemalloc_env(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        return


def active() -> str:
    """The malloc this process uses: jemalloc (loaded), glibc or system."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            if any("jemalloc" in line for line in maps):
                return "jemalloc"
    except OSError:
        pass
    return "glibc" if sys.platform.startswith("linux") else "system"


def tune_cpu_memory(primitive_cache: int = ONEDNN_PRIMITIVE_CACHE) -> bool:
    """Make CPU training reuse freed memory instead of faulting it in again.

    Caps oneDNN's cache of compiled matmul kernels (bf16 on CPU) at `primitive_cache`
    entries unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set: with batch-dependent shapes
    its default capacity (1024) fills with kernels for shapes that do not come back
    (what that costs: docs/performance.md, section "The allocator (fast/allocator.py)").

    Under glibc (jemalloc is configured by MALLOC_CONF instead, see `use_jemalloc`): by
    default glibc hands each freed block of more than a few MB back to the kernel
    (unmapping it, or trimming the top of the heap), so the next step page-faults it in
    again. Here blocks up to 32 MB (every tensor of a step once the loss is chunked; see
    `loss.projected_cross_entropy`) come from the heap, which is never trimmed, and only
    larger ones are mapped and unmapped. Returns whether glibc was tuned.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(primitive_cache))
    if active() != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1
        return ok and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
