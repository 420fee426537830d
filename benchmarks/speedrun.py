"""A 5-minute CPU speedrun on tiny Shakespeare: the GPT-2 baseline's best against the modern preset.

    python benchmarks/speedrun.py                         # every config in benchmarks/speedrun/, 5 minutes each
    python benchmarks/speedrun.py --only modern           # configs whose name contains "modern"
    python benchmarks/speedrun.py --budget 30 --eval_iters 20    # a quick trial, not the figure
    python benchmarks/speedrun.py --only modern --merge   # rerun some, keep the others' saved results

Each config in ``benchmarks/speedrun/*.toml`` is a ``numgpt train --config`` file (a user reruns
one with ``numgpt train --config benchmarks/speedrun/modern.toml``). This script runs each in
turn with ``--max_time`` set to the budget: training stops once its steps have taken that many
seconds, evaluations and checkpoints excluded, and the learning-rate schedule runs on the
fraction of the budget spent. Character level, nanoGPT's 90/10 split of tiny Shakespeare.

Reported per config: the best validation loss (each evaluation is the mean over ``eval_iters``
= 200 validation batches, so a difference of 0.05 is far above the evaluation's own noise),
the steps taken and the training seconds. The baselines (``gpt2_*``: GPT-2 architecture,
AdamW) form the documented sweep; the best of them is the baseline the ``modern_*`` configs
must beat. A picture of validation loss against training time goes to ``--plot``.

Runs one after another, each in its own process on the whole machine; nothing else should run
meanwhile (the budget is wall-clock time).
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG_DIR = os.path.join(HERE, "speedrun")
SHARED_TEXT = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")


def run_config(path, data, budget, eval_iters, work_dir):
    """Train one config for ``budget`` seconds; returns its evaluations and the run's totals."""
    name = os.path.splitext(os.path.basename(path))[0]
    out_dir = os.path.join(work_dir, name)
    cmd = [sys.executable, "-m", "numgpt", "train", "--config", path, "--data", data, "--out_dir", out_dir,
           "--max_time", str(budget), "--overwrite", "--sample_tokens", "0"]
    if eval_iters is not None:
        cmd += ["--eval_iters", str(eval_iters)]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()
    print("\n".join(line for line in tail if line.startswith(("model", "architecture", "eval", "training", "note"))))
    if proc.returncode:
        print("\n".join(tail[-20:]))
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    evals, steps = [], []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            (evals if "val_loss" in row else steps).append(row)
    best = min(evals, key=lambda r: r["val_loss"])
    return {"name": name, "config": path, "best_val": best["val_loss"], "best_at_iter": best["iter"],
            "iters": evals[-1]["iter"], "train_seconds": evals[-1]["train_time"], "wall_seconds": wall,
            "curve": [(r["train_time"], r["val_loss"]) for r in evals],
            "train_curve": [(r["train_time"], r["loss"]) for r in steps]}


def plot(results, path, budget, eval_iters):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for r in results:
        xs, ys = zip(*r["curve"])
        style = "-" if r["name"].startswith("modern") else "--"
        line, = ax.plot(xs, ys, style, marker="o", markersize=3, label=f"{r['name']} (best {r['best_val']:.3f})")
        if r.get("train_curve"):        # the training loss between evaluations, faint, in the same colour
            tx, ty = zip(*r["train_curve"])
            ax.plot(tx, ty, "-", color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.set_xlabel("training time, s (evaluations excluded)")
    ax.set_ylabel(f"validation loss (mean of {eval_iters} batches);\nfaint: training loss")
    ax.set_title(f"tiny Shakespeare, character level, {budget:.0f} s budget on 2 cores")
    ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"picture: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=SHARED_TEXT if os.path.exists(SHARED_TEXT) else "shakespeare",
                    help="tiny Shakespeare as a local file (default: ../shared/data/tinyshakespeare.txt if "
                         "present, else numgpt's 'shakespeare', downloaded once)")
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per config (default 300)")
    ap.add_argument("--only", default="", help="run only the configs whose name contains this")
    ap.add_argument("--eval_iters", type=int, default=None, help="override the configs' 200 evaluation batches")
    ap.add_argument("--plot", default=None, help="where the picture goes (default: benchmarks/speedrun.png "
                    "for the full 300 s runs, ./speedrun_trial.png for a trial)")
    ap.add_argument("--results", default=None, help="the results file (default: benchmarks/speedrun_results.json "
                    "for the full 300 s runs, ./speedrun_trial.json for a trial)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' directories (printed)")
    ap.add_argument("--merge", action="store_true",
                    help="add to the results already in --results (a config run again replaces its entry)")
    args = ap.parse_args()
    # A trial (another budget or fewer evaluation batches) must not overwrite the committed figure.
    full = args.budget == 300.0 and args.eval_iters is None
    if args.results is None:
        args.results = os.path.join(HERE, "speedrun_results.json") if full else "speedrun_trial.json"
    if args.plot is None:
        args.plot = os.path.join(HERE, "speedrun.png") if full else "speedrun_trial.png"
    if args.merge and os.path.exists(args.results):      # checked before hours of training, not after
        with open(args.results) as f:
            saved_budget = json.load(f)["budget_seconds"]
        if saved_budget != args.budget:
            raise SystemExit(f"{args.results} holds {saved_budget} s runs, not {args.budget} s ones: "
                             f"--merge adds only runs of the same budget")

    configs = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.toml")) if args.only in os.path.basename(p))
    if not configs:
        raise SystemExit(f"no config in {CONFIG_DIR} matches {args.only!r}")
    work_dir = tempfile.mkdtemp(prefix="numgpt-speedrun-")
    results = []
    try:
        for path in configs:
            results.append(run_config(path, args.data, args.budget, args.eval_iters, work_dir))
    finally:
        if args.keep:
            print(f"runs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    if args.merge and os.path.exists(args.results):
        with open(args.results) as f:
            saved = json.load(f)
        if saved["budget_seconds"] != args.budget:
            raise SystemExit(f"{args.results} holds {saved['budget_seconds']} s runs, not {args.budget} s ones")
        ran = {r["name"] for r in results}
        results = sorted([r for r in saved["results"] if r["name"] not in ran] + results, key=lambda r: r["name"])
    print(f"\n{'config':<24} {'best val':>9} {'at iter':>8} {'iters':>7} {'train s':>8} {'wall s':>7}")
    for r in results:
        print(f"{r['name']:<24} {r['best_val']:9.4f} {r['best_at_iter']:8d} {r['iters']:7d} "
              f"{r['train_seconds']:8.1f} {r['wall_seconds']:7.0f}")
    baselines = [r for r in results if r["name"].startswith("gpt2")]
    moderns = [r for r in results if r["name"].startswith("modern")]
    if baselines and moderns:
        base = min(baselines, key=lambda r: r["best_val"])
        best = min(moderns, key=lambda r: r["best_val"])
        margin = base["best_val"] - best["best_val"]
        print(f"\nbaseline (best of the gpt2 sweep): {base['name']} {base['best_val']:.4f}")
        print(f"modern: {best['name']} {best['best_val']:.4f}; better by {margin:.4f} "
              f"({'meets' if margin >= 0.05 else 'misses'} the 0.05 target; "
              f"{'reaches' if best['best_val'] <= 1.65 else 'misses'} 1.65)")
    with open(args.results, "w") as f:
        json.dump({"budget_seconds": args.budget, "date": time.strftime("%Y-%m-%d %H:%M"),
                   "results": results}, f, indent=1)
    print(f"results: {args.results}")
    plot(results, args.plot, args.budget, args.eval_iters or 200)


if __name__ == "__main__":
    main()
