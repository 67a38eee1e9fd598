"""Launched by tests/test_edm.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): a few DDP training steps."""
import sys

import numpy as np
import torch

from cedm.model.train import TrainConfig, train

if __name__ == "__main__":
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(32) % 3 - 1  # includes -1 (no condition)
    cfg = TrainConfig(preset="tiny", kimg=0.048, batch=8, dropout=0.1, checkpoint_kimg=0.016, sample_kimg=0,
                      log_every=2, seed=3)
    train(images, labels, 2, sys.argv[1], cfg, device="cpu", show_progress=False)
    torch.distributed.destroy_process_group()
