"""Run by the cluster tests under torchrun: one process of a multi-node job reads ``epochs`` epochs
of a prepared split through lungcls's LitData loader and writes the rows of each batch it got to
``<out>/rank<r>.json``, so the test can count every sample across the nodes."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from lungcls.data.cache.prepared import streaming_loader


def main(root: str, n: int, batch_size: int, out: str, epochs: int = 2) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loader = streaming_loader(root, "train", n, batch_size, shuffle=True, seed=3, workers=0, world=world)
    seen = []
    for epoch in range(epochs):
        loader.set_epoch(epoch) if hasattr(loader, "set_epoch") else None
        seen.append([rows.tolist() for _, _, rows in loader])
    Path(out, f"rank{rank}.json").write_text(json.dumps({"world": world, "epochs": seen}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
