"""One rank of the two-node test (tests/test_multinode.py), started by torchrun.

argv: OUT_DIR CACHE_DIR. Rank 0 writes the merged comparison's STIR values (npz) and the
ranks' work logs (json); other ranks write nothing. The cache directory is the only state the
two "nodes" share.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch


def main() -> None:
    from ftlens.invariance import compare
    from ftlens.models import load_model

    out, cache = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pt = load_model("ftlens:vit-micro")
    torch.manual_seed(1)
    ft = load_model("ftlens:vit-micro")
    pool = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    # under torchrun (WORLD_SIZE=2) compare shards itself; rank 1 returns None
    result = compare(pt, ft, pool, cache=cache, layers=["blocks.0", "blocks.1", "blocks.2"], seeds=1, n_images=16,
                     steps=5, progress=False)
    if result is None:
        return
    stir = result.stir.sort_values(["target", "reference", "target_layer", "reference_layer", "seed"])
    np.savez(os.path.join(out, "stir.npz"), stir=stir["stir"].to_numpy(np.float64),
             per_layer=result.per_layer.select_dtypes("number").to_numpy(np.float64))
    ranks = result.config["distributed"]["ranks"]
    with open(os.path.join(out, "ranks.json"), "w") as f:
        json.dump({"world_size": result.config["distributed"]["world_size"],
                   "ranks": [{k: r[k] for k in ("rank", "computed", "cache_writes")} for r in ranks]}, f)


if __name__ == "__main__":
    main()
