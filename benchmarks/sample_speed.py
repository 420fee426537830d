"""Sampling throughput: numgpt with the KV cache, numgpt recomputing the context, and PyTorch recomputing.

    python benchmarks/sample_speed.py                       # numgpt only
    python benchmarks/sample_speed.py --vs-torch            # + PyTorch (pip install torch==2.13.0)
    python benchmarks/sample_speed.py --configs baby small --new_tokens 500 --threads 2

Batch 1, a one-token prompt, ``--new_tokens`` new tokens (default 500) at the config's block size
(256 unless the config says otherwise; past it the cache is refilled from the last half block, and
the recompute paths crop the context to the last block, as nanoGPT does). Tokens/s for each; the
PyTorch model recomputes the whole (cropped) context for every token, as nanoGPT's generate() does.
Each measurement runs in its own process.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    # name: (n_layer, n_head, n_embd, block_size, vocab_size)
    "baby": (4, 4, 128, 256, 65),
    "small": (6, 6, 384, 256, 65),
    "gpt2": (12, 12, 768, 256, 50257),
}


def worker_numgpt(cfg, new_tokens, use_cache):
    import numpy as np

    from numgpt.model import GPT, GPTConfig
    from numgpt.sample import generate

    L, H, C, T, V = cfg
    model = GPT(GPTConfig(V, T, L, H, C), seed=0)
    idx = np.zeros((1, 1), dtype=np.int64)
    generate(model, idx, 5, rng=np.random.default_rng(0), use_cache=use_cache)     # warm-up
    t0 = time.perf_counter()
    generate(model, idx, new_tokens, rng=np.random.default_rng(0), use_cache=use_cache)
    return new_tokens / (time.perf_counter() - t0)


def worker_torch(cfg, new_tokens, threads):
    import torch
    import torch.nn.functional as F

    from torch_gpt import make_gpt

    torch.set_num_threads(threads)
    L, H, C, T, V = cfg
    torch.manual_seed(0)
    model = make_gpt(L, H, C, T, V).eval()

    @torch.no_grad()
    def generate(idx, n):
        for _ in range(n):
            logits = model(idx[:, -T:])
            nxt = torch.multinomial(F.softmax(logits / 0.8, dim=-1), 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    idx = torch.zeros((1, 1), dtype=torch.long)
    generate(idx, 5)
    t0 = time.perf_counter()
    generate(idx, new_tokens)
    return new_tokens / (time.perf_counter() - t0)


def run_worker(kind, config, threads, new_tokens):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), NUMGPT_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", kind, "--configs", config, "--threads", str(threads),
           "--new_tokens", str(new_tokens)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", nargs="+", type=int, default=[2])
    parser.add_argument("--new_tokens", type=int, default=500)
    parser.add_argument("--vs-torch", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vs_torch and importlib.util.find_spec("torch") is None:       # say so before numgpt's runs
        raise SystemExit("--vs-torch needs PyTorch in this Python: pip install torch (or the test extra)")
    if args.worker:
        cfg = CONFIGS[args.configs[0]]
        if args.worker == "torch":
            tps = worker_torch(cfg, args.new_tokens, args.threads[0])
        else:
            tps = worker_numgpt(cfg, args.new_tokens, use_cache=args.worker == "cache")
        print(json.dumps({"tokens_per_s": tps}))
        return
    print(f"sampling speed: batch 1, {args.new_tokens} new tokens")
    for threads in args.threads:
        print(f"\n== {threads} thread(s) ==")
        print(f"{'config':<8}{'KV cache':>12}{'recompute':>12}{'cache/recompute':>17}"
              + (f"{'torch recompute':>17}{'cache/torch':>13}" if args.vs_torch else ""))
        for name in args.configs:
            cache = run_worker("cache", name, threads, args.new_tokens)
            recompute = run_worker("recompute", name, threads, args.new_tokens)
            line = f"{name:<8}{cache:>12.1f}{recompute:>12.1f}{cache / recompute:>16.1f}x"
            if args.vs_torch:
                torch_tps = run_worker("torch", name, threads, args.new_tokens)
                line += f"{torch_tps:>17.1f}{cache / torch_tps:>12.1f}x"
            print(line)


if __name__ == "__main__":
    main()
