"""Reproduce nanoGPT's CPU run on tiny Shakespeare and print the best validation loss and wall time.

nanoGPT's README trains, on a CPU:
    --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
    --lr_decay_iters=2000 --dropout=0.0   (learning rate 1e-3, min_lr 1e-4, beta2 0.99, warmup 100,
    eval_iters 20)
and reports a best validation loss of 1.88. This script runs the same recipe with numgpt.

    python benchmarks/nanogpt_shakespeare.py [--data PATH] [--out_dir DIR]

The data defaults to ../shared/data/tinyshakespeare.txt beside the repository when present,
otherwise to 'shakespeare' (downloaded once and cached).
"""

import argparse
import os
import pathlib
import platform
import time

from numgpt.train import TrainConfig, train

HERE = pathlib.Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.exists() else "shakespeare")
    parser.add_argument("--out_dir", default="out-shakespeare-char")
    parser.add_argument("--max_iters", type=int, default=2000)
    args = parser.parse_args()
    cfg = TrainConfig(data=args.data, out_dir=args.out_dir, block_size=64, batch_size=12, n_layer=4, n_head=4,
                      n_embd=128, max_iters=args.max_iters, lr_decay_iters=args.max_iters, dropout=0.0,
                      learning_rate=1e-3, min_lr=1e-4, beta2=0.99, warmup_iters=100, eval_iters=20,
                      eval_interval=250, log_interval=100, sample_tokens=300)
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    print(f"\nbest val loss {result.best_val_loss:.4f} (nanoGPT reports 1.88) in {wall:.1f} s wall time, "
          f"{result.iter_num} iterations; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")


if __name__ == "__main__":
    main()
