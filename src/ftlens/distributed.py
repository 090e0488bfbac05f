"""The old home of :mod:`ftlens.process_group` (rank, world size, barriers, local launch) and
:mod:`ftlens.invariance.parallel` (the executors that split a comparison across processes and
GPUs): every name that was importable from here still is.
"""

from __future__ import annotations

from ftlens.invariance.parallel import (  # noqa: F401
    LocalProcesses,
    ModelRef,
    TorchDistributed,
    _cache_root,
    _local_rank_main,
    _merge,
    _plan_spec,
    _run_share,
    _sync_inputs,
    executor,
    portable,
)
from ftlens.process_group import (  # noqa: F401
    TIMEOUT_ENV,
    Context,
    _free_port,
    _timeout,
    _worker,
    assign,
    barrier,
    context,
    init_process_group,
    launch_local,
)
from ftlens.process_group import broadcast as _broadcast  # noqa: F401
from ftlens.process_group import gather as _gather  # noqa: F401
from ftlens.process_group import set_launcher_threads as _set_launcher_threads  # noqa: F401

__all__ = [
    "Context",
    "LocalProcesses",
    "ModelRef",
    "TorchDistributed",
    "assign",
    "barrier",
    "context",
    "executor",
    "init_process_group",
    "launch_local",
    "portable",
]
