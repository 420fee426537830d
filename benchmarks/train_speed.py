"""Training throughput of numgpt, optionally side by side with an equivalent PyTorch model.

    python benchmarks/train_speed.py                      # every config, numgpt only
    python benchmarks/train_speed.py --vs-torch           # + PyTorch: a nanoGPT-style step and explicit attention
    python benchmarks/train_speed.py --configs baby small --threads 1 2 --repeats 3
    python benchmarks/train_speed.py --vs-torch --nanogpt-only --repeats 5 --threads 2 1   # issue 14's targets
    python benchmarks/train_speed.py --vs-torch --nanogpt /path/to/nanoGPT   # nanoGPT's own model.py
    python benchmarks/train_speed.py --targets --nanogpt /path/to/nanoGPT     # every target of issue 14, one run

For each config and thread count it prints the median ms/step (forward + backward + clipping +
AdamW, after warm-up), tokens/s, model FLOPs per step by nanoGPT's estimate (6N + 12 L C T per
token, N the parameters without wpe), achieved GFLOP/s, that as a share of NumPy's float32 matmul
peak measured in the same run (a 2048^3 matmul) and the peak RSS. Every measurement runs in its own
process (NumPy's and PyTorch's thread pools fight when they share one), and with --vs-torch the two
frameworks alternate, so drift of a shared machine hits both alike. The PyTorch reference is a
copy of nanoGPT's CPU step in torch_gpt.py ("nanogpt": fused attention through
F.scaled_dot_product_attention, torch AdamW with nanoGPT's two parameter groups,
clip_grad_norm_(1.0), zero_grad(set_to_none=True)); the same model with explicit-matmul attention
("torch-expl") is a second, labelled column. With --nanogpt DIR (a clone of
https://github.com/karpathy/nanoGPT, not a numgpt dependency) the "nanogpt" column runs nanoGPT's
own code instead of the copy: GPT and GPTConfig imported from DIR/model.py, built and stepped as its
train.py does on a CPU (float32, no GradScaler, no torch.compile, the optimizer from the model's
configure_optimizers). numgpt runs as `numgpt train`
does: its extra workers are forked processes where the model picks them (NUMGPT_PROCESSES=0 forces
threads), and the RSS column then adds the worker's peak to the main process's.

--targets runs issue 14's targets and nothing else, in one invocation: baby, 6 x 6 x 384 and GPT-2
124M on 2 threads and baby on 1 thread, at least 5 alternating rounds each against the nanogpt
column only; with --nanogpt it then runs the whole tiny-Shakespeare recipe against nanoGPT's own
train.py (nanogpt_shakespeare.py, one seed, its data default), and it ends with one verdict line per
target and a count of those met.
"""

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # name: (n_layer, n_head, n_embd, block_size, batch_size, vocab_size)
    "baby": (4, 4, 128, 64, 12, 65),
    "small": (6, 6, 384, 256, 8, 65),
    "gpt2": (12, 12, 768, 256, 4, 50257),
}
STEPS = {"baby": 40, "small": 8, "gpt2": 4}

# Issue 14's targets: the median over rounds of numgpt's tokens/s over the nanoGPT-style step's, by
# (config, threads); GPT-2 also at 80% of NumPy's matmul peak. And in every case numgpt's spread
# (slowest round / fastest) no larger than PyTorch's.
TARGETS = {("baby", 2): 1.2, ("baby", 1): 1.1, ("small", 2): 1.1, ("gpt2", 2): 1.1}
TARGET_PLAN = [(2, ["baby", "small", "gpt2"]), (1, ["baby"])]   # what --targets runs: (threads, configs)
GPT2_PEAK_SHARE = 0.80
MIN_ROUNDS = 5
WARMUP = {"baby": 5, "small": 2, "gpt2": 1}

NANOGPT_HOW_TO_GET = ("nanoGPT's source is not a numgpt dependency; clone it:\n"
                      "    git clone https://github.com/karpathy/nanoGPT /path/to/nanoGPT\n"
                      "then pass its directory: --nanogpt /path/to/nanoGPT")


def nanogpt_problem(directory, files=("model.py",)):
    """None when ``directory`` holds nanoGPT's ``files``; otherwise a sentence saying what is missing."""
    if not directory:
        return "no --nanogpt directory given"
    if not os.path.isdir(directory):
        return f"{directory!r} is not a directory"
    missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        return f"{directory!r} holds no {', '.join(missing)} (is it a clone of karpathy/nanoGPT?)"
    with open(os.path.join(directory, "model.py")) as f:
        source = f.read()
    if not all(name in source for name in ("class GPT(", "class GPTConfig", "def configure_optimizers")):
        return (f"{os.path.join(directory, 'model.py')!r} does not define nanoGPT's GPT, GPTConfig and "
                "configure_optimizers")
    return None


def reference_label(nanogpt_dir):
    """What the "nanogpt" column ran."""
    return f"nanoGPT's model.py from {nanogpt_dir}" if nanogpt_dir else "the copy in torch_gpt.py"


def flops_per_step(n_layer, n_head, n_embd, block, batch, vocab):
    n = n_layer * (12 * n_embd * n_embd + 13 * n_embd) + vocab * n_embd + 2 * n_embd
    return (6 * n + 12 * n_layer * n_embd * block) * block * batch


def peak_rss_mib():
    """This process's peak RSS plus its largest child's (numgpt's worker process, once joined).

    Memory shared between them (the parameters) is counted twice: an upper bound.
    """
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


# --- workers (each runs in a fresh process) ------------------------------------------------

def worker_numgpt(cfg, steps, warmup):
    import numpy as np

    from numgpt._malloc import tune_malloc
    from numgpt.model import GPT, GPTConfig
    from numgpt.optim import AdamW, clip_scale, decay_mask_from_layout, grad_norm
    from numgpt.parallel import DataParallel, default_processes

    L, H, C, T, B, V = cfg
    tune_malloc()                                                        # as `numgpt train` does
    model = DataParallel(GPT(GPTConfig(V, T, L, H, C), seed=0), processes=default_processes())
    opt = AdamW(model.flat_params, model.flat_grads, decay_mask_from_layout(model.model.layout), lr=1e-4,
                betas=(0.9, 0.99), weight_decay=0.1)
    rng = np.random.default_rng(0)
    times = []
    for i in range(warmup + steps):
        x = rng.integers(0, V, (B, T))
        y = rng.integers(0, V, (B, T))
        t0 = time.perf_counter()
        model.loss_and_grads(x, y)
        opt.step(grad_scale=clip_scale(grad_norm(model.flat_grads), 1.0))   # clipping, as numgpt train clips
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    model.close()                   # joins the worker processes, so that their peak RSS is counted
    return times, ("processes" if model.processes and model.n_workers > 1 else "threads")


def worker_torch(cfg, steps, warmup, threads, attention="fused"):
    import torch

    from torch_gpt import make_gpt

    torch.set_num_threads(threads)
    L, H, C, T, B, V = cfg
    torch.manual_seed(0)
    model = make_gpt(L, H, C, T, V, attention=attention)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.99))
    times = []
    for i in range(warmup + steps):
        x = torch.randint(0, V, (B, T))
        y = torch.randint(0, V, (B, T))
        t0 = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def worker_nanogpt_source(cfg, steps, warmup, threads, directory):
    """nanoGPT's own model and optimizer from ``directory``, stepped as its train.py does on a CPU."""
    import contextlib

    import torch

    sys.path.insert(0, os.path.abspath(directory))
    from model import GPT, GPTConfig                # nanoGPT's model.py, unmodified

    if torch.get_num_threads() != threads:          # train.py leaves the count to OMP_NUM_THREADS
        raise RuntimeError(f"torch runs {torch.get_num_threads()} threads, not {threads}")
    L, H, C, T, B, V = cfg
    torch.manual_seed(1337)                         # as train.py
    with contextlib.redirect_stdout(sys.stderr):    # its parameter counts; stdout carries the JSON
        config = GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, bias=True, vocab_size=V, dropout=0.0)
        model = GPT(config)
        model.to("cpu")
        optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.99), "cpu")
    times = []
    for i in range(warmup + steps):
        x = torch.randint(0, V, (B, T))
        y = torch.randint(0, V, (B, T))
        t0 = time.perf_counter()
        logits, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def worker_matmul_peak():
    import numpy as np

    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048 ** 3 / best / 1e9


def run_worker(kind, config, threads, steps, warmup, script=__file__, python=sys.executable, nanogpt=None):
    """Run ``script --worker kind`` in a fresh ``python`` process with ``threads`` threads everywhere;
    its last output line, parsed as JSON. This checkout's numgpt comes first on its path. ``nanogpt``,
    a nanoGPT source directory, is passed on as ``--nanogpt`` (the "nanogpt" worker then runs it)."""
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["NUMGPT_THREADS"] = str(threads)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, os.path.abspath(script), "--worker", kind, "--configs", config, "--threads", str(threads),
           "--steps", str(steps), "--warmup", str(warmup)] + (["--nanogpt", nanogpt] if nanogpt else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds per config")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default per config)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--vs-torch", action="store_true", help="also time an equivalent PyTorch model")
    parser.add_argument("--nanogpt-only", action="store_true",
                        help="with --vs-torch: the nanoGPT-style step only, without the explicit-attention column")
    parser.add_argument("--nanogpt", default=None, metavar="DIR",
                        help="a clone of karpathy/nanoGPT: the nanogpt column runs its own model.py "
                             "(implies --vs-torch)")
    parser.add_argument("--targets", action="store_true",
                        help="issue 14's targets only, in one run: the (config, threads) pairs it names, "
                             f"at least {MIN_ROUNDS} rounds against the nanogpt column, then (with --nanogpt) "
                             "the whole tiny-Shakespeare run against nanoGPT's train.py; --configs and "
                             "--threads are ignored")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.targets:
        args.vs_torch, args.nanogpt_only, args.repeats = True, True, max(args.repeats, MIN_ROUNDS)
        plan = TARGET_PLAN
    else:
        plan = [(threads, args.configs) for threads in args.threads]
    if args.nanogpt:
        args.nanogpt = os.path.abspath(args.nanogpt)
        args.vs_torch = True
    if args.vs_torch and importlib.util.find_spec("torch") is None:       # say so before numgpt's rounds
        raise SystemExit("--vs-torch needs PyTorch in this Python: pip install torch (or the test extra)")

    if args.worker:
        name = args.configs[0]
        if args.worker == "peak":
            print(json.dumps({"gflops": worker_matmul_peak()}))
            return
        steps = args.steps or STEPS[name]
        warmup = WARMUP[name] if args.warmup is None else args.warmup
        if args.worker == "numgpt":
            times, workers = worker_numgpt(CONFIGS[name], steps, warmup)
        elif args.worker == "nanogpt" and args.nanogpt:
            times = worker_nanogpt_source(CONFIGS[name], steps, warmup, args.threads[0], args.nanogpt)
            workers = "torch"
        else:
            attention = "fused" if args.worker == "nanogpt" else "explicit"
            times, workers = worker_torch(CONFIGS[name], steps, warmup, args.threads[0], attention), "torch"
        print(json.dumps({"times": times, "rss_mib": peak_rss_mib(), "workers": workers}))
        return

    problem = nanogpt_problem(args.nanogpt) if args.nanogpt else None
    if problem:
        print(f"train_speed.py: {problem}.\n{NANOGPT_HOW_TO_GET}", file=sys.stderr)
        return 2
    import numpy as np
    print(f"numgpt training speed; NumPy {np.__version__}, {os.cpu_count()} cores")
    if args.vs_torch:
        print(f"PyTorch reference, the nanogpt column: {reference_label(args.nanogpt)}")
    verdicts = []
    for threads, configs in plan:
        peak = run_worker("peak", "baby", threads, 0, 0)["gflops"]
        print(f"\n== {threads} thread(s); NumPy float32 matmul peak {peak:.0f} GFLOP/s ==")
        header = f"{'config':<7}{'framework':<10}{'ms/step':>10}{'tokens/s':>11}{'GFLOP/s':>9}{'% peak':>8}{'RSS MiB':>9}"
        print(header)
        for name in configs:
            cfg = CONFIGS[name]
            tokens = cfg[3] * cfg[4]
            flops = flops_per_step(*cfg)
            kinds = ["numgpt", "nanogpt"] + ([] if args.nanogpt_only else ["torch-expl"]) if args.vs_torch \
                else ["numgpt"]
            times = {k: [] for k in kinds}
            rounds = {k: [] for k in kinds}       # each round's median, to show the spread
            rss = {k: 0.0 for k in kinds}
            workers = set()
            for _ in range(args.repeats):
                for kind in kinds:
                    res = run_worker(kind, name, threads, args.steps or STEPS[name],
                                     WARMUP[name] if args.warmup is None else args.warmup,
                                     nanogpt=args.nanogpt if kind == "nanogpt" else None)
                    times[kind] += res["times"]
                    rounds[kind].append(statistics.median(res["times"]))
                    rss[kind] = max(rss[kind], res["rss_mib"])
                    if kind == "numgpt":
                        workers.add(res["workers"])
            ms = {}
            for kind in kinds:
                ms[kind] = 1000 * statistics.median(times[kind])
                gflops = flops / (ms[kind] / 1000) / 1e9
                print(f"{name:<7}{kind:<10}{ms[kind]:>10.1f}{tokens / (ms[kind] / 1000):>11,.0f}{gflops:>9.1f}"
                      f"{100 * gflops / peak:>7.0f}%{rss[kind]:>9.0f}")
            if threads > 1:
                print(f"{name:<7}{'':<10} numgpt's extra workers ran as {' and '.join(sorted(workers))}")
            for ref in (kinds[1:] if args.vs_torch else []):
                per_round = [t / n for n, t in zip(rounds["numgpt"], rounds[ref])]
                spread = {k: max(rounds[k]) / min(rounds[k]) for k in ("numgpt", ref)}
                print(f"{name:<7}{'ratio':<10} numgpt/{ref} tokens/s = {ms[ref] / ms['numgpt']:.2f}"
                      f"  (round by round: {', '.join(f'{r:.2f}' for r in per_round)}; spread max/min "
                      f"numgpt {spread['numgpt']:.2f}, {ref} {spread[ref]:.2f})")
                if ref == "nanogpt" and (name, threads) in TARGETS:
                    # The peak again after the rounds, the higher of the two kept: a peak measured while
                    # the host was busy would make any share look good (it has read above 100%).
                    peak = max(peak, run_worker("peak", "baby", threads, 0, 0)["gflops"])
                    share = flops / (ms["numgpt"] / 1000) / 1e9 / peak
                    verdicts.append(target_verdict(name, threads, statistics.median(per_round), spread, share,
                                                   len(per_round)))
    if args.targets:
        verdicts.append(whole_run_verdict(args.nanogpt))
    if verdicts:
        print(f"\n== issue 14's targets (median of the round-by-round ratios against the nanogpt column: "
              f"{reference_label(args.nanogpt)}) ==")
        for line in verdicts:
            print(line)
    if args.targets:
        met = sum(" MET " in line for line in verdicts)
        print(f"{met} of {len(verdicts)} targets met in this run")


def whole_run_verdict(nanogpt):
    """Run nanogpt_shakespeare.py's comparison with nanoGPT's own train.py (one seed), echoing its output;
    return its verdict line, or a MISSED line saying why there is none."""
    if not nanogpt:
        return "whole run:     MISSED not measured: it compares with nanoGPT's own train.py, pass --nanogpt DIR"
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nanogpt_shakespeare.py")
    print("\n== the whole tiny-Shakespeare run: nanogpt_shakespeare.py --nanogpt DIR --seeds 1337 ==", flush=True)
    proc = subprocess.Popen([sys.executable, script, "--nanogpt", nanogpt, "--seeds", "1337"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    verdict = None
    for line in proc.stdout:
        print("  " + line, end="", flush=True)
        if line.startswith("whole run"):
            verdict = line.strip()
    if proc.wait() != 0 or verdict is None:
        return f"whole run:     MISSED nanogpt_shakespeare.py exited with {proc.returncode} and no verdict line"
    return verdict


def target_verdict(name, threads, ratio, spread, peak_share, n_rounds):
    """One line: the target for (config, threads), the measured figures, and met or missed."""
    want = TARGETS[(name, threads)]
    shown = math.floor(ratio * 1000) / 1000          # truncated: 1.1996 must not print as a pass
    checks = [(f"ratio {shown:.3f} >= {want}", ratio >= want),
              (f"spread numgpt {spread['numgpt']:.2f} <= nanogpt {spread['nanogpt']:.2f}",
               spread["numgpt"] <= spread["nanogpt"]),
              (f"{n_rounds} rounds >= {MIN_ROUNDS}", n_rounds >= MIN_ROUNDS)]
    if name == "gpt2":
        if peak_share > 1.0:           # no step runs above the peak: the peak was measured on a busy host
            checks.append((f"{100 * peak_share:.0f}% of the matmul peak is impossible (the peak was measured "
                           f"while the host was busy): re-run on a quiet machine", False))
        else:
            checks.append((f"{100 * peak_share:.0f}% of the matmul peak >= {100 * GPT2_PEAK_SHARE:.0f}%",
                           peak_share >= GPT2_PEAK_SHARE))
    met = all(ok for _, ok in checks)
    detail = "; ".join(f"{text} {'ok' if ok else 'NO'}" for text, ok in checks)
    return f"{name:<6}{threads} thread(s): {'MET   ' if met else 'MISSED'} {detail}"


if __name__ == "__main__":
    sys.exit(main())
