"""Reproduce nanoGPT's CPU run on tiny Shakespeare and print the best validation loss and wall time.

nanoGPT's README trains, on a CPU:
    --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
    --lr_decay_iters=2000 --dropout=0.0   (learning rate 1e-3, min_lr 1e-4, beta2 0.99, warmup 100,
    eval_iters 20)
and reports a best validation loss of 1.88. This script runs the same recipe with numgpt.

    python benchmarks/nanogpt_shakespeare.py [--data PATH] [--out_dir DIR] [--seeds 1337 1 2]
    python benchmarks/nanogpt_shakespeare.py --vs-torch --seeds 1337 1 2

With several seeds it trains once per seed and prints each best validation loss, their mean and
their spread: the figure moves by about +-0.01 from seed to seed at eval_iters 20.

With --vs-torch it also trains, per seed and in a separate process, the same recipe in PyTorch
(benchmarks/torch_gpt.py's model with nanoGPT's initialisation, torch.optim.AdamW with nanoGPT's
two parameter groups, torch's gradient clipping) on the same data split, batch sampler, schedule
and evaluation batches, so the two libraries' figures can be compared seed for seed.

The data defaults to ../shared/data/tinyshakespeare.txt beside the repository when present,
otherwise to 'shakespeare' (downloaded once and cached).
"""

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"

# nanoGPT's CPU recipe (config/train_shakespeare_char.py plus the README's command line)
RECIPE = dict(block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
              learning_rate=1e-3, min_lr=1e-4, beta2=0.99, warmup_iters=100, eval_iters=20,
              eval_interval=250)


def run_numgpt(data, out_dir, seed, max_iters, sample_tokens):
    from numgpt.train import TrainConfig, train

    cfg = TrainConfig(data=data, out_dir=out_dir, max_iters=max_iters, lr_decay_iters=max_iters,
                      log_interval=100, sample_tokens=sample_tokens, seed=seed, **RECIPE)
    return train(cfg).best_val_loss


def run_torch(data, seed, max_iters, threads):
    """The recipe in PyTorch; returns the best validation loss (printed as JSON by the worker)."""
    import numpy as np
    import torch

    from numgpt.data import get_batch, load_text, split_train_val
    from numgpt.optim import cosine_lr
    from numgpt.tokenizers import CharTokenizer, encode_array

    sys.path.insert(0, str(HERE))
    from torch_gpt import make_gpt

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    r = RECIPE
    text, _ = load_text(data)
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = split_train_val(encode_array(tokenizer, text))
    model = make_gpt(r["n_layer"], r["n_head"], r["n_embd"], r["block_size"], tokenizer.vocab_size,
                     attention="fused")        # nanoGPT on a CPU: F.scaled_dot_product_attention
    # nanoGPT's initialisation: N(0, 0.02) weights and embeddings, zero biases, the two
    # residual projections at 0.02 / sqrt(2 n_layer); layer norms stay at 1 and 0.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("ln_"):
                continue
            if name.endswith("bias"):
                p.zero_()
            elif name.endswith(("c_proj.weight", "mlp_proj.weight")):
                p.normal_(0.0, 0.02 / math.sqrt(2 * r["n_layer"]))
            else:
                p.normal_(0.0, 0.02)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=r["learning_rate"], betas=(0.9, r["beta2"]), eps=1e-8)
    rng = np.random.default_rng(seed)
    splits = {"train": train_ids, "val": val_ids}

    def batch(split, generator):
        x, y = get_batch(splits[split], r["batch_size"], r["block_size"], generator)
        return torch.from_numpy(x), torch.from_numpy(y)

    best = math.inf
    for it in range(max_iters + 1):
        if it % r["eval_interval"] == 0 or it == max_iters:
            model.eval()
            with torch.no_grad():
                # the evaluation batches numgpt.train.estimate_loss draws: generators seeded (seed, it, k)
                val_rng = np.random.default_rng([seed, it, 1])
                val = float(np.mean([model(*batch("val", val_rng)).item() for _ in range(r["eval_iters"])]))
            model.train()
            best = min(best, val)
            print(f"torch eval {it:>5} | val {val:.4f}", file=sys.stderr, flush=True)
        if it == max_iters:
            break
        for group in opt.param_groups:
            group["lr"] = cosine_lr(it, r["learning_rate"], r["min_lr"], r["warmup_iters"], max_iters)
        loss = model(*batch("train", rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return best


def torch_in_subprocess(data, seed, max_iters):
    # a process of its own: OpenBLAS's and PyTorch's thread pools slow each other down when they share one
    threads = int(os.environ.get("NUMGPT_THREADS") or min(os.cpu_count() or 1, 4))
    cmd = [sys.executable, __file__, "--torch-worker", "--data", data, "--seeds", str(seed),
           "--max_iters", str(max_iters), "--torch-threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"PyTorch run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["best_val_loss"]


def summary(name, values):
    if len(values) > 1:
        print(f"{name}: {len(values)} seeds, best val loss mean {statistics.mean(values):.4f}, "
              f"min {min(values):.4f}, max {max(values):.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.exists() else "shakespeare")
    parser.add_argument("--out_dir", default="out-shakespeare-char")
    parser.add_argument("--max_iters", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument("--vs-torch", action="store_true", help="also train the same recipe in PyTorch")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        best = run_torch(args.data, args.seeds[0], args.max_iters, args.torch_threads)
        print(json.dumps({"best_val_loss": best}))
        return

    results, torch_results = [], []
    for seed in args.seeds:
        out_dir = f"{args.out_dir}-{seed}" if len(args.seeds) > 1 else args.out_dir
        start = time.perf_counter()
        best = run_numgpt(args.data, out_dir, seed, args.max_iters, 300 if len(args.seeds) == 1 else 0)
        wall = time.perf_counter() - start
        results.append(best)
        print(f"\nseed {seed}: best val loss {best:.4f} (nanoGPT reports 1.88) in {wall:.1f} s "
              f"wall time, {args.max_iters} iterations; {platform.machine()}, {os.cpu_count()} cores, "
              f"NUMGPT_THREADS={os.environ.get('NUMGPT_THREADS', 'default')}", flush=True)
        if args.vs_torch:
            start = time.perf_counter()
            torch_best = torch_in_subprocess(args.data, seed, args.max_iters)
            torch_results.append(torch_best)
            print(f"seed {seed}: PyTorch, same recipe: best val loss {torch_best:.4f} in "
                  f"{time.perf_counter() - start:.1f} s wall time", flush=True)
    print()
    summary("numgpt", results)
    if args.vs_torch:
        summary("PyTorch", torch_results)


if __name__ == "__main__":
    main()
