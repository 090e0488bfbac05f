"""Sharding across two nodes equals one process.

Two torchrun agents on this machine act as two nodes (``--nnodes 2 --nproc-per-node 1``),
meeting through torchrun's c10d rendezvous on 127.0.0.1; their workers join one gloo process
group. The only state they share is the inversion cache directory. Bounded: every process
has a timeout, and the ranks' barrier timeout is short.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import ftlens
from ftlens.invariance import compare, compare_plan
from ftlens.models import load_model
from ftlens.store import Cache

WORKER = Path(__file__).with_name("_multinode_worker.py")
LAYERS = ["blocks.0", "blocks.1", "blocks.2"]
TIMEOUT_S = 600  # generous for a loaded machine; alone it takes ~25 s


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(node: int, port: int, out: Path, cache: Path, log: Path) -> subprocess.Popen:
    src = str(Path(ftlens.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "FTLENS_DIST_TIMEOUT_S": "540", "FTLENS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "ftlens-two-nodes",
           "--rdzv-conf", f"is_host={int(node == 0)},join_timeout=300", "--local-addr", "127.0.0.1",
           "--max-restarts", "0", "--monitor-interval", "1", str(WORKER), str(out), str(cache)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _two_nodes(root: Path) -> tuple[list, list[Path]]:
    """Run the two torchrun nodes once; ``(exit codes, logs)``."""
    cache, out = root / "shared-cache", root / "out"
    out.mkdir(parents=True)
    port = _free_port()
    logs = [root / f"node{k}.log" for k in (0, 1)]
    nodes = [_node(k, port, out, cache, logs[k]) for k in (0, 1)]
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in nodes]
    except subprocess.TimeoutExpired:
        codes = ["timed out"]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    return codes, logs


def test_two_nodes_with_a_shared_cache_give_the_single_process_result(tmp_path):
    # one retry: on a heavily loaded machine torchrun's agents have been seen to abort at teardown
    # (after the workers' exit barrier); a second launch starts from nothing (new port, folders)
    for attempt in (1, 2):
        root = tmp_path / f"attempt{attempt}"
        codes, logs = _two_nodes(root)
        if codes == [0, 0]:
            break
    assert codes == [0, 0], "\n".join(f"--- node {k}\n{logs[k].read_text()[-3000:]}" for k in (0, 1))
    cache, out = root / "shared-cache", root / "out"

    torch.manual_seed(0)
    pt = load_model("ftlens:vit-micro")
    torch.manual_seed(1)
    ft = load_model("ftlens:vit-micro")
    pool = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    kw = dict(layers=LAYERS, seeds=1, n_images=16, steps=5)
    single = compare(pt, ft, pool, cache=None, progress=False, **kw)
    stir = single.stir.sort_values(["target", "reference", "target_layer", "reference_layer", "seed"])
    got = np.load(out / "stir.npz")
    assert np.array_equal(got["stir"], stir["stir"].to_numpy(np.float64))  # bit for bit
    assert np.array_equal(got["per_layer"], single.per_layer.select_dtypes("number").to_numpy(np.float64),
                          equal_nan=True)

    # both nodes worked: disjoint non-empty shares covering every unique inversion, all in the cache
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["world_size"] == 2
    shares = [set(r["computed"]) for r in ranks["ranks"]]
    *_, plan = compare_plan(pt, ft, pool, **kw)
    assert all(shares) and not shares[0] & shares[1] and shares[0] | shares[1] == set(plan.unique_keys)
    assert len(Cache(cache).entries()) == len(plan.unique_keys) == 2 * len(LAYERS)
