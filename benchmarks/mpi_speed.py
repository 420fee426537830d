"""Training speed under MPI (``mpiexec -n N``) against the default single-process run, and the all-reduce.

    python benchmarks/mpi_speed.py                          # baby and small, 2 ranks vs 1 process, alternating
    python benchmarks/mpi_speed.py --configs baby --ranks 2 --repeats 4
    python benchmarks/mpi_speed.py --allreduce              # all-reduce time for 0.8M, 10M, 124M parameters
    python benchmarks/mpi_speed.py --model 75 124e6         # the ring all-reduce cost model (step ms, params)

Steps are timed as ``benchmarks/train_speed.py`` times them (forward + backward + all-reduce +
clipping + AdamW, float32, median after warm-up), each measurement in fresh processes: ``mpiexec -n N``
with one worker and one BLAS thread per rank (what ``numgpt train`` picks when the ranks fill the
cores), and one process as ``numgpt train`` runs it (its forked or threaded workers). Under MPI the
gradient all-reduce is also timed on its own inside each step, to give its share of the step, after
a barrier that separates it from the time spent waiting for the slower rank (also reported).
Needs ``pip install -e '.[mpi]'``.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]             # this checkout's numgpt, installed or not
from train_speed import CONFIGS, STEPS, WARMUP  # noqa: E402

# every parameter (wpe included) of the baby and small configs and of GPT-2 124M (block 1024)
PARAMS = {"0.8M": 809_856, "10M": 10_770_816, "124M": 124_439_808}


def mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise SystemExit("mpiexec not found beside this Python or on PATH: install the MPI extra, "
                         "pip install -e '.[mpi]' (mpi4py and MPICH's wheel, which brings mpiexec)")
    return found


# --- what runs inside the measured processes --------------------------------------------------------

def step_worker(name, steps, warmup, use_mpi):
    import numpy as np

    from numgpt._blas import set_blas_threads
    from numgpt._malloc import tune_malloc
    from numgpt.model import GPT, GPTConfig
    from numgpt.optim import AdamW, clip_scale, decay_mask_from_layout, grad_norm
    from numgpt.parallel import DataParallel, default_processes
    from numgpt.parallel import mpi as mpi_module

    L, H, C, T, B, V = CONFIGS[name]
    tune_malloc()
    reduce_times, wait_times = [], []
    if use_mpi:
        comm = mpi_module.mpi_world()
        n_workers = mpi_module.workers_per_rank(comm)
        set_blas_threads(n_workers)
        real = mpi_module.allreduce_sum

        def timed(comm, array):
            if array.size == 1:                 # the loss, not the gradient buffer
                return real(comm, array)
            t0 = time.perf_counter()
            comm.Barrier()                      # waiting for the slower rank, timed apart from the transfer
            t1 = time.perf_counter()
            real(comm, array)
            reduce_times.append(time.perf_counter() - t1)
            wait_times.append(t1 - t0)
        mpi_module.allreduce_sum = timed
        dp = DataParallel(GPT(GPTConfig(V, T, L, H, C), seed=0), n_workers, comm=comm)
    else:
        comm = None
        dp = DataParallel(GPT(GPTConfig(V, T, L, H, C), seed=0), processes=default_processes())
    opt = AdamW(dp.flat_params, dp.flat_grads, decay_mask_from_layout(dp.model.layout), lr=1e-4,
                betas=(0.9, 0.99), weight_decay=0.1, n_threads=dp.n_workers)
    rng = np.random.default_rng(0)
    times = []
    for i in range(warmup + steps):
        x = rng.integers(0, V, (B, T))           # every rank draws the same global batch
        y = rng.integers(0, V, (B, T))
        if comm is not None:
            comm.Barrier()                       # the ranks start each step together
        t0 = time.perf_counter()
        dp.loss_and_grads(x, y)
        opt.step(grad_scale=clip_scale(grad_norm(dp.flat_grads), 1.0))   # clipping, as numgpt train clips
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    dp.close()
    reduce_times, wait_times = reduce_times[warmup:], wait_times[warmup:]
    if comm is None or comm.Get_rank() == 0:
        print(json.dumps({"times": times, "reduce": reduce_times, "wait": wait_times, "workers": dp.describe()}))


def allreduce_worker(n_params, repeats):
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    buffer = np.ones(n_params, dtype=np.float32)
    times = []
    for _ in range(repeats + 1):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    if comm.Get_rank() == 0:
        print(json.dumps({"times": times[1:]}))


# --- the driver ------------------------------------------------------------------------------------

def run(cmd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_step(name, ranks, steps, warmup):
    args = [sys.executable, __file__, "--worker", "step", "--configs", name, "--steps", str(steps),
            "--warmup", str(warmup)]
    if ranks:
        return run([mpiexec(), "-n", str(ranks), *args, "--mpi"])
    return run(args)


def cost_model_table(step_ms, n_params, bytes_per_value=4):
    """Ring all-reduce: each rank sends and receives 2 (N-1)/N of the buffer; speed-up of N hosts."""
    lines = ["| hosts | link | all-reduce ms (model) | step ms | speed-up | communication share |", "|---|---|---|---|---|---|"]
    size = n_params * bytes_per_value
    for gbit in (1, 10):
        bandwidth = gbit * 1e9 / 8
        for hosts in (2, 4, 8, 16):
            reduce_ms = 2 * (hosts - 1) / hosts * size / bandwidth * 1000
            compute_ms = step_ms / hosts
            total = compute_ms + reduce_ms
            lines.append(f"| {hosts} | {gbit} Gb/s | {reduce_ms:.1f} | {total:.1f} | {step_ms / total:.2f}x | "
                         f"{reduce_ms / total:.0%} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["baby", "small"], choices=list(CONFIGS))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds per config")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--allreduce", action="store_true", help="time the all-reduce of 0.8M, 10M, 124M floats")
    parser.add_argument("--model", nargs=2, metavar=("STEP_MS", "PARAMS"), default=None,
                        help="print the ring all-reduce cost model for a one-host step time and model size")
    parser.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n-params", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "step":
        name = args.configs[0]
        step_worker(name, args.steps or STEPS[name], WARMUP[name] if args.warmup is None else args.warmup, args.mpi)
        return
    if args.worker == "allreduce":
        allreduce_worker(args.n_params, args.repeats)
        return
    if args.model:
        print(cost_model_table(float(args.model[0]), int(float(args.model[1]))))
        return
    if args.allreduce:
        print(f"all-reduce (float32, in place, SUM) on {args.ranks} ranks of this machine, median ms:")
        for label, n in PARAMS.items():
            res = run([mpiexec(), "-n", str(args.ranks), sys.executable, __file__, "--worker", "allreduce",
                       "--n-params", str(n), "--repeats", str(max(args.repeats, 5))])
            ms = 1000 * statistics.median(res["times"])
            print(f"  {label:>5} parameters ({4 * n / 2**20:6.1f} MiB): {ms:8.2f} ms   "
                  f"({4 * n / (ms / 1000) / 1e9:.2f} GB/s of buffer)")
        return

    print(f"{args.ranks} MPI ranks vs one process; {os.cpu_count()} cores; alternating, {args.repeats} rounds")
    for name in args.configs:
        steps = args.steps or STEPS[name]
        warmup = WARMUP[name] if args.warmup is None else args.warmup
        rounds = {"mpi": [], "one": []}
        shares, reduces, waits, workers = [], [], [], {}
        for _ in range(args.repeats):
            for kind in ("mpi", "one"):
                res = measure_step(name, args.ranks if kind == "mpi" else 0, steps, warmup)
                rounds[kind].append(1000 * statistics.median(res["times"]))
                workers[kind] = res["workers"]
                if kind == "mpi":
                    reduce_ms = 1000 * statistics.median(res["reduce"])
                    reduces.append(reduce_ms)
                    waits.append(1000 * statistics.median(res["wait"]))
                    shares.append(reduce_ms / rounds["mpi"][-1])
        mpi_ms, one_ms = statistics.median(rounds["mpi"]), statistics.median(rounds["one"])
        print(f"{name:<6} mpiexec -n {args.ranks} ({workers['mpi']}): {mpi_ms:8.1f} ms/step  "
              f"(rounds {', '.join(f'{t:.1f}' for t in rounds['mpi'])})")
        print(f"{'':<6} one process ({workers['one']}): {one_ms:8.1f} ms/step  "
              f"(rounds {', '.join(f'{t:.1f}' for t in rounds['one'])})")
        print(f"{'':<6} one process / MPI = {one_ms / mpi_ms:.2f}; all-reduce {statistics.median(reduces):.2f} ms, "
              f"{statistics.median(shares):.1%} of the MPI step; before it, {statistics.median(waits):.2f} ms "
              f"waiting for the slower rank")


if __name__ == "__main__":
    main()
