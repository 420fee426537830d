"""Where a training step's time goes: numgpt's milliseconds per category beside PyTorch's.

    python benchmarks/profile_step.py                                   # baby and small, 2 threads
    python benchmarks/profile_step.py --configs baby --threads 1 --steps 20 --json
    python benchmarks/profile_step.py --torch-python /path/to/venv/bin/python   # torch not in this Python

numgpt: the step of `numgpt train` (loss and gradients, the gradient's norm, AdamW with the clip
scale) runs in one process with ONE worker and ONE BLAS thread (one core, the whole batch: no thread
pool to contend); "clip grad norm" is then the norm alone, the scale being AdamW's. Every
layer function the model calls through ``numgpt.layers`` is wrapped with a perf_counter timer (self
time: a nested timed call is not counted twice). The attention layer's softmax helpers
(``causal_softmax``, ``softmax_backward_from_probs``) are wrapped too, so that "softmax" is split from
"attention's small products"; the score product Q K^T runs inside ``causal_softmax``, so the wrapper
times it once more on the same operands (that extra time is excluded from every figure) and moves it
from softmax to the small products. The lm-head matmul is a ``linear_forward``/``linear_backward``:
it counts as a matmul. "gradient hand-off" is the model copying/adding each parameter gradient into
the flat buffer. "other/overhead" (Python) is the step's wall time minus every timed category. The
real step (DataParallel with --threads workers, as `numgpt train` runs it) is timed in a separate
process, unwrapped; the "numgpt scaled" column gives each category its one-core share of that real
step (an estimate: it assumes the split shrinks every category alike). Its "gradient reduction" row
is an estimate too: (workers - 1) additions of a whole flat gradient buffer, timed here (what the
forked workers' gradients cost to sum); with thread workers the sum happens inside the hand-off.

PyTorch: the nanoGPT-style step of torch_gpt.py (fused attention, AdamW with nanoGPT's two groups,
clip_grad_norm_(1.0), zero_grad(set_to_none=True)) under torch.profiler (record_shapes off); each
op's self CPU time goes to the category of the nearest op (itself, else an ancestor) whose name
names one; clipping and AdamW are attributed by record_function ranges around them. The fused
attention kernel holds its softmax: PyTorch's "softmax" row is then empty. "other/overhead" is the
profiled step's wall time minus the categorized ops. The plain step time without the profiler is
printed beside it.

Every measurement runs in its own process. Medians over --steps steps after --warmup.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_speed  # noqa: E402
from train_speed import CONFIGS  # noqa: E402

CATEGORIES = ["matmuls", "attention small products", "softmax", "layer norm", "GELU", "cross-entropy",
              "embedding", "dropout", "gradient hand-off", "clip grad norm", "AdamW", "gradient reduction",
              "other/overhead"]
STEPS = {"baby": 30, "small": 6, "gpt2": 3}
WARMUP = {"baby": 5, "small": 2, "gpt2": 1}


# --- numgpt ---------------------------------------------------------------------------------

class Timers:
    """Self-time accumulators per category; nested timed calls are subtracted from their caller."""

    def __init__(self):
        self.acc = {}
        self.stack = []              # children's time of each open timed call
        self.excluded = 0.0          # extra measuring work (re-timed score products), kept out of every figure
        self.calls = 0

    def add(self, cat, seconds):
        self.acc[cat] = self.acc.get(cat, 0.0) + seconds

    def wrap(self, fn, cat):
        pc = time.perf_counter

        def timed(*args, **kwargs):
            ex0 = self.excluded
            self.stack.append(0.0)
            t0 = pc()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = pc() - t0 - (self.excluded - ex0)
                child = self.stack.pop()
                self.add(cat, dt - child)
                if self.stack:
                    self.stack[-1] += dt
                self.calls += 1
        return timed


def install_numgpt_timers(timers):
    import numgpt.layers as L
    import numgpt.layers.attention as A
    import numgpt.model as M

    cats = {"linear": "matmuls", "attention": "attention small products", "layernorm": "layer norm",
            "rmsnorm": "layer norm", "gelu": "GELU", "softmax_cross_entropy": "cross-entropy",
            "embedding": "embedding", "dropout": "dropout"}
    for base, cat in cats.items():
        for suffix in ("_forward", "_backward"):
            name = base + suffix
            setattr(L, name, timers.wrap(getattr(L, name), cat))
    A.softmax_backward_from_probs = timers.wrap(A.softmax_backward_from_probs, "softmax")
    inner = timers.wrap(A.causal_softmax, "softmax")

    def causal_softmax(q, kT, out=None):
        out = inner(q, kT, out=out)
        t0 = time.perf_counter()       # the score product, timed once more: softmax -> small products
        q @ kT
        s = time.perf_counter() - t0
        timers.add("softmax", -s)
        timers.add("attention small products", s)
        timers.excluded += time.perf_counter() - t0
        return out
    A.causal_softmax = causal_softmax
    M.OverwritingAdd.__call__ = timers.wrap(M.OverwritingAdd.__call__, "gradient hand-off")
    M._head_back = timers.wrap(M._head_back, "matmuls")     # the lm head's backward (not a linear_backward)


def wrapper_overhead_us(timers_cls):
    """Cost of one timed call around a no-op, in microseconds."""
    t = timers_cls()
    f = t.wrap(lambda: None, "x")
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    wrapped = time.perf_counter() - t0
    g = lambda: None  # noqa: E731
    t0 = time.perf_counter()
    for _ in range(n):
        g()
    plain = time.perf_counter() - t0
    return 1e6 * (wrapped - plain) / n


def worker_numgpt(cfg, steps, warmup, profile):
    import numpy as np

    from numgpt._malloc import tune_malloc
    from numgpt.model import GPT, GPTConfig
    from numgpt.optim import AdamW, clip_scale, decay_mask_from_layout, grad_norm
    from numgpt.parallel import DataParallel, default_processes

    L_, H, C, T, B, V = cfg
    tune_malloc()
    if profile:
        model = DataParallel(GPT(GPTConfig(V, T, L_, H, C), seed=0), n_workers=1)
    else:
        model = DataParallel(GPT(GPTConfig(V, T, L_, H, C), seed=0), processes=default_processes())
    opt = AdamW(model.flat_params, model.flat_grads, decay_mask_from_layout(model.model.layout), lr=1e-4,
                betas=(0.9, 0.99), weight_decay=0.1)
    timers = Timers()
    if profile:
        install_numgpt_timers(timers)
        norm_of, step = timers.wrap(grad_norm, "clip grad norm"), timers.wrap(opt.step, "AdamW")
    else:
        norm_of, step = grad_norm, opt.step
    rng = np.random.default_rng(0)
    totals, per_step = [], []
    for i in range(warmup + steps):
        x = rng.integers(0, V, (B, T))
        y = rng.integers(0, V, (B, T))
        timers.acc, timers.excluded, calls0, calls = {}, 0.0, timers.calls, 0
        t0 = time.perf_counter()
        model.loss_and_grads(x, y)
        step(grad_scale=clip_scale(norm_of(model.flat_grads), 1.0))   # clipping, as numgpt train clips
        wall = time.perf_counter() - t0 - timers.excluded
        if i >= warmup:
            totals.append(wall)
            per_step.append(dict(timers.acc))
            calls = timers.calls - calls0
    out = {"step_ms": 1000 * statistics.median(totals), "workers": model.n_workers,
           "kind": "processes" if model.processes and model.n_workers > 1 else "threads"}
    model.close()
    if profile:
        cats = {c: 1000 * statistics.median(s.get(c, 0.0) for s in per_step) for c in CATEGORIES}
        cats["other/overhead"] = out["step_ms"] - sum(cats.values())
        a = np.zeros(model.model.num_params, dtype=model.model.dtype)
        b = np.ones_like(a)
        reps = []
        for _ in range(5):
            t0 = time.perf_counter()
            a += b
            reps.append(time.perf_counter() - t0)
        out.update(categories=cats, timed_calls=calls, wrapper_us=wrapper_overhead_us(Timers),
                   flat_add_ms=1000 * statistics.median(reps))
    return out


# --- PyTorch ----------------------------------------------------------------------------------

TORCH_NAMES = [   # (substring of a lower-cased op name, category); the first that matches wins
    ("clip_grad_norm", "clip grad norm"), ("optimizer_adamw", "AdamW"),
    ("scaled_dot_product", "attention small products"), ("flash_attention", "attention small products"),
    ("cross_entropy", "cross-entropy"), ("log_softmax", "cross-entropy"), ("nll_loss", "cross-entropy"),
    ("logsoftmax", "cross-entropy"), ("nllloss", "cross-entropy"),     # autograd nodes: LogSoftmaxBackward0
    ("_softmax", "softmax"), ("softmax", "softmax"),
    ("layer_norm", "layer norm"), ("gelu", "GELU"), ("embedding", "embedding"), ("dropout", "dropout"),
    ("aten::addmm", "matmuls"), ("aten::mm", "matmuls"), ("aten::bmm", "matmuls"),
    ("aten::matmul", "matmuls"), ("aten::linear", "matmuls"),
]


def torch_category(event):
    e = event
    while e is not None:
        name = e.name.lower()
        for key, cat in TORCH_NAMES:
            if key in name:
                return cat
        e = e.cpu_parent
    return None


def worker_torch(cfg, steps, warmup, threads, profile):
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile, record_function

    from torch_gpt import make_gpt

    torch.set_num_threads(threads)
    L_, H, C, T, B, V = cfg
    torch.manual_seed(0)
    model = make_gpt(L_, H, C, T, V, attention="fused")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.99))

    def one_step():
        x = torch.randint(0, V, (B, T))
        y = torch.randint(0, V, (B, T))
        t0 = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with record_function("clip_grad_norm"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("optimizer_adamw"):
            opt.step()
        return time.perf_counter() - t0

    for _ in range(warmup):
        one_step()
    plain = [one_step() for _ in range(steps)]
    out = {"step_ms": 1000 * statistics.median(plain)}
    if profile:
        with tprofile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            walls = [one_step() for _ in range(steps)]
        cats = {c: 0.0 for c in CATEGORIES}
        for ev in prof.events():
            cat = torch_category(ev)
            if cat is not None:
                cats[cat] += ev.self_cpu_time_total / 1000 / steps     # us -> ms per step
        prof_ms = 1000 * sum(walls) / steps
        cats["other/overhead"] = prof_ms - sum(cats.values())
        out.update(categories=cats, profiled_step_ms=prof_ms)
    return out


# --- driver -----------------------------------------------------------------------------------

def run_worker(kind, config, threads, steps, warmup, python):
    return train_speed.run_worker(kind, config, threads, steps, warmup, script=__file__, python=python)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["baby", "small"], choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default per config)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--torch-python", default=sys.executable, help="a Python with torch installed")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--markdown", action="store_true", help="also print the tables for benchmarks/README.md")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.no_torch and args.torch_python == sys.executable and importlib.util.find_spec("torch") is None:
        raise SystemExit("the PyTorch column needs torch in this Python: pip install torch, or pass "
                         "--torch-python /path/to/a/python/with/torch, or --no-torch")

    name = args.configs[0]
    if args.worker:
        cfg = CONFIGS[name]
        if args.worker.startswith("numgpt"):
            res = worker_numgpt(cfg, args.steps, args.warmup, profile=args.worker == "numgpt-profile")
        else:
            res = worker_torch(cfg, args.steps, args.warmup, args.threads, profile=True)
        print(json.dumps(res))
        return

    results = {}
    for name in args.configs:
        steps = args.steps or STEPS[name]
        warmup = WARMUP[name] if args.warmup is None else args.warmup
        prof = run_worker("numgpt-profile", name, 1, steps, warmup, sys.executable)
        real = run_worker("numgpt-step", name, args.threads, steps, warmup, sys.executable)
        torch_res = None if args.no_torch else run_worker("torch", name, args.threads, steps, warmup,
                                                          args.torch_python)
        cats = dict(prof["categories"])
        if real["workers"] > 1 and real["kind"] == "processes":
            cats["gradient reduction"] = (real["workers"] - 1) * prof["flat_add_ms"]
        results[name] = {"config": CONFIGS[name], "threads": args.threads, "steps": steps, "warmup": warmup,
                         "numgpt_profile": prof, "numgpt_step": real, "torch": torch_res}
        L_, H, C, T, B, V = CONFIGS[name]
        print(f"\n== {name}: {L_}x{H}x{C}, block {T}, batch {B}, vocab {V}; {args.threads} thread(s); "
              f"median of {steps} steps after {warmup} ==")
        # Each category's share of the one-core step, applied to the real step's wall time: what it
        # costs per step with the batch split over the workers (an estimate; the reduction is not scaled).
        scale = real["step_ms"] / prof["step_ms"]
        scaled = {c: (v if c == "gradient reduction" else v * scale) for c, v in cats.items()}
        results[name]["numgpt_scaled"] = scaled
        print(f"{'category':<26}{'numgpt 1 core':>14}{'numgpt scaled':>14}{'PyTorch':>10}   (ms per step)")
        tc = torch_res["categories"] if torch_res else {}
        for c in CATEGORIES:
            n, s = cats.get(c, 0.0), scaled.get(c, 0.0)
            t = f"{tc.get(c, 0.0):>10.2f}" if torch_res else f"{'-':>10}"
            if c == "gradient reduction":
                n_s = (f"{'-':>14}{s:>13.2f}*" if s else f"{'-':>14}{'-':>14}")
            else:
                n_s = f"{n:>14.2f}{s:>14.2f}"
            print(f"{c:<26}{n_s}{t}")
        tp = f"{torch_res['profiled_step_ms']:>10.2f}" if torch_res else f"{'-':>10}"
        print(f"{'step, profiled':<26}{prof['step_ms']:>14.2f}{'':>14}{tp}")
        tu = f"{torch_res['step_ms']:>10.2f}" if torch_res else f"{'-':>10}"
        print(f"{'step, unprofiled':<26}{'':>14}{real['step_ms']:>14.2f}{tu}")
        print(f"numgpt profiled: 1 worker, 1 BLAS thread (one core, whole batch), {prof['timed_calls']} timed "
              f"calls/step at ~{prof['wrapper_us']:.1f} us each (~{prof['timed_calls'] * prof['wrapper_us'] / 1000:.2f}"
              f" ms/step, inside the categories); unprofiled: {real['workers']} worker(s) as {real['kind']}, "
              f"BLAS {args.threads} thread(s) allowed; scaled = 1-core figure x {scale:.3f} (unprofiled/profiled)")
        if cats.get("gradient reduction"):
            print(f"* estimate, not in the profiled total: {real['workers'] - 1} addition(s) of the flat gradient "
                  f"buffer at {prof['flat_add_ms']:.2f} ms each")
        if torch_res:
            print(f"PyTorch: torch.set_num_threads({args.threads}); fused attention (softmax inside it)")
    if args.markdown:
        print()
        print_markdown(results)
    if args.json:
        print(json.dumps(results))


def print_markdown(results):
    for name, r in results.items():
        L_, H, C, T, B, V = r["config"]
        p, sc, t, n = r["numgpt_profile"], r["numgpt_scaled"], r["torch"], r["threads"]
        print(f"{name} ({L_}x{H}x{C}, block {T}, batch {B}), {n} thread(s), ms per step:\n")
        print(f"| category | numgpt, 1 core | numgpt, scaled to the {r['numgpt_step']['workers']}-worker step "
              f"| PyTorch, {n} thread(s) |")
        print("|---|---:|---:|---:|")
        for c in CATEGORIES:
            if c == "dropout":          # the profiled step has no dropout
                continue
            one = "-" if c == "gradient reduction" else f"{p['categories'].get(c, 0.0):.2f}"
            ref = f"{t['categories'][c]:.2f}" if t else "-"
            print(f"| {c} | {one} | {sc.get(c, 0.0):.2f} | {ref} |")
        print(f"| **step, profiled** | {p['step_ms']:.1f} | | {t['profiled_step_ms']:.1f} |" if t else
              f"| **step, profiled** | {p['step_ms']:.1f} | | - |")
        print(f"| **step, unprofiled** | | {r['numgpt_step']['step_ms']:.1f} | {t['step_ms']:.1f} |" if t else
              f"| **step, unprofiled** | | {r['numgpt_step']['step_ms']:.1f} | - |")
        print()


if __name__ == "__main__":
    main()
