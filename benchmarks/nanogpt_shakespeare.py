"""Reproduce nanoGPT's CPU run on tiny Shakespeare and print the best validation loss and wall time.

nanoGPT's README trains, on a CPU:
    --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
    --lr_decay_iters=2000 --dropout=0.0   (learning rate 1e-3, min_lr 1e-4, beta2 0.99, warmup 100,
    eval_iters 20)
and reports a best validation loss of 1.88. This script runs the same recipe with numgpt.

    python benchmarks/nanogpt_shakespeare.py [--data PATH] [--out_dir DIR] [--seeds 1337 1 2]

With several seeds it trains once per seed and prints each best validation loss, their mean and
their spread: the figure moves by about +-0.01 from seed to seed at eval_iters 20.

The data defaults to ../shared/data/tinyshakespeare.txt beside the repository when present,
otherwise to 'shakespeare' (downloaded once and cached).
"""

import argparse
import os
import pathlib
import platform
import statistics
import time

from numgpt.train import TrainConfig, train

HERE = pathlib.Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.exists() else "shakespeare")
    parser.add_argument("--out_dir", default="out-shakespeare-char")
    parser.add_argument("--max_iters", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        cfg = TrainConfig(data=args.data, out_dir=f"{args.out_dir}-{seed}" if len(args.seeds) > 1 else args.out_dir,
                          block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, max_iters=args.max_iters,
                          lr_decay_iters=args.max_iters, dropout=0.0, learning_rate=1e-3, min_lr=1e-4, beta2=0.99,
                          warmup_iters=100, eval_iters=20, eval_interval=250, log_interval=100,
                          sample_tokens=300 if len(args.seeds) == 1 else 0, seed=seed)
        start = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - start
        results.append(result.best_val_loss)
        print(f"\nseed {seed}: best val loss {result.best_val_loss:.4f} (nanoGPT reports 1.88) in {wall:.1f} s "
              f"wall time, {result.iter_num} iterations; {platform.machine()}, {os.cpu_count()} cores, "
              f"NUMGPT_THREADS={os.environ.get('NUMGPT_THREADS', 'default')}", flush=True)
    if len(results) > 1:
        print(f"\n{len(results)} seeds: best val loss mean {statistics.mean(results):.4f}, "
              f"min {min(results):.4f}, max {max(results):.4f}")


if __name__ == "__main__":
    main()
