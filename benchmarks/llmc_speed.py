"""Training step of numgpt against karpathy's llm.c `train_gpt2.c` (CPU, C with OpenMP).

    git clone https://github.com/karpathy/llm.c /path/to/llm.c
    python benchmarks/llmc_speed.py --llmc /path/to/llm.c
    python benchmarks/llmc_speed.py --llmc /path/to/llm.c --configs baby gpt2 --threads 2 --rounds 3

llm.c is not a numgpt dependency and nothing of it is copied here: the script needs a local copy of
its source (``--llmc DIR``, the directory holding ``train_gpt2.c`` and ``llmc/``). Into a temporary
directory it

1. copies ``train_gpt2.c`` and patches the copy (llm.c's ``main`` hard-codes what it runs): the
   batch size ``int B = 4;`` and sequence length ``int T = 64;`` are set to the config's; the loop
   ``step <= 40`` runs ``--llmc_steps`` steps instead; the validation loss, computed every 10 steps
   (untimed), is computed at step 0 only, to check the checkpoint (below); the text sampling at
   steps 20 and 40 (63 untimed full forwards, starting from the tokenizer's end-of-text id, and there
   is no tokenizer file here) is switched off. The timed step, ``gpt2_forward``, ``gpt2_zero_grad``,
   ``gpt2_backward`` and ``gpt2_update`` between its two ``clock_gettime`` calls, is untouched;
2. builds it the way llm.c's Makefile does on Linux with OpenMP:
   ``cc -Ofast -march=native -fopenmp -DOMP -I DIR train_gpt2.c -lm``;
3. writes random weights (numgpt's GPT-2 initialisation, seed 0) in llm.c's checkpoint format,
   ``gpt2_124M.bin`` (what ``main`` opens): a header of 256 int32 (magic 20240326, version 3, maxT,
   V, L, NH, C, padded V) and then float32 tensors in llm.c's order, wte (padded V rows, the padding
   zero), wpe, then each per-layer tensor stacked over the layers (ln1 w/b, qkv w/b, attention
   projection w/b, ln2 w/b, fc w/b, fc projection w/b), then ln_f w/b; llm.c stores linear weights
   (out, in) as PyTorch does, numgpt (in, out), so they are transposed. maxT is the config's block
   size, as numgpt's position table; padded V is V rounded up to a multiple of 128, as llm.c pads;
4. writes random token files in llm.c's shard format (a header of 256 int32: magic 20240520, version
   1, the count; then uint16 ids) where ``main`` looks for tiny Shakespeare.

The numgpt step is ``train_speed.py``'s: ``worker_numgpt`` (forward, backward, gradient clipping,
AdamW, the batch split over worker processes or threads as ``numgpt train`` runs it). The steps
differ a little in what they do: llm.c's update is AdamW with weight decay 0 and no clipping, and
its lm head and loss run over the padded vocabulary (50304 columns at GPT-2, 128 at the baby
config); numgpt clips the gradient and decays the weights. Both are float32.

Before timing, the checkpoint is checked: llm.c's validation loss at step 0 (5 unshuffled batches)
must equal numgpt's loss on the same weights and the same batches (to 1e-3), and both are close to
ln V for random weights.

Each round runs numgpt and llm.c in alternation, each in its own process, with the same thread
count (OPENBLAS_NUM_THREADS/NUMGPT_THREADS for numgpt, OMP_NUM_THREADS for llm.c). Warm-up steps are
dropped (llm.c allocates its gradients and optimizer state in its first step); the median step
time gives tokens/s, and the ratio numgpt/llm.c is printed per round and as the median.
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))      # this checkout's numgpt, installed or not (as train_speed's workers)

CONFIGS = {
    # name: (n_layer, n_head, n_embd, block_size, batch_size, vocab_size), the order of train_speed.py's
    "baby": (4, 4, 128, 64, 12, 65),
    "gpt2": (12, 12, 768, 64, 4, 50257),
    "gpt2-t256": (12, 12, 768, 256, 4, 50257),
}
NUMGPT_STEPS = {"baby": (5, 40), "gpt2": (1, 4), "gpt2-t256": (1, 3)}         # (warm-up, timed)
LLMC_STEPS = {"baby": (5, 30), "gpt2": (1, 3), "gpt2-t256": (1, 2)}

HOW_TO_GET = ("this benchmark needs a local copy of llm.c's source (it is not a numgpt dependency):\n"
              "    git clone https://github.com/karpathy/llm.c /path/to/llm.c\n"
              "then pass its directory:\n"
              "    python benchmarks/llmc_speed.py --llmc /path/to/llm.c")

LLMC_MODEL_MAGIC, LLMC_MODEL_VERSION = 20240326, 3
LLMC_DATA_MAGIC, LLMC_DATA_VERSION = 20240520, 1
VAL_BATCHES = 5                 # train_gpt2.c's val_num_batches


# --- llm.c's files -------------------------------------------------------------------------------

def padded_vocab(v, multiple=128):
    return (v + multiple - 1) // multiple * multiple


def write_llmc_checkpoint(model, path):
    """``model`` (numgpt GPT) in llm.c's gpt2_124M.bin layout (see the module docstring)."""
    import numpy as np

    c, p = model.config, model.params
    L, C, V = c.n_layer, c.n_embd, c.vocab_size
    Vp = padded_vocab(V)
    header = np.zeros(256, dtype="<i4")
    header[:8] = [LLMC_MODEL_MAGIC, LLMC_MODEL_VERSION, c.block_size, V, L, c.n_head, C, Vp]
    wte = np.zeros((Vp, C), dtype=np.float32)
    wte[:V] = p["wte"]

    def stacked(name, transpose=False):
        return np.stack([p[f"h.{i}.{name}"].T if transpose else p[f"h.{i}.{name}"] for i in range(L)])

    tensors = [wte, p["wpe"],
               stacked("ln_1.weight"), stacked("ln_1.bias"),
               stacked("attn.c_attn.weight", True), stacked("attn.c_attn.bias"),
               stacked("attn.c_proj.weight", True), stacked("attn.c_proj.bias"),
               stacked("ln_2.weight"), stacked("ln_2.bias"),
               stacked("mlp.c_fc.weight", True), stacked("mlp.c_fc.bias"),
               stacked("mlp.c_proj.weight", True), stacked("mlp.c_proj.bias"),
               p["ln_f.weight"], p["ln_f.bias"]]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for t in tensors:
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())


def write_llmc_tokens(ids, path):
    import numpy as np

    header = np.zeros(256, dtype="<i4")
    header[:3] = [LLMC_DATA_MAGIC, LLMC_DATA_VERSION, len(ids)]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(ids, dtype="<u2").tobytes())


def patch_source(text, B, T, steps):
    """llm.c's train_gpt2.c with its main() set to this config (see the module docstring)."""
    edits = [
        (r"int B = 4;", f"int B = {B};"),                                      # batch size
        (r"int T = 64;", f"int T = {T};"),                                     # sequence length
        (r"step <= 40;", f"step <= {steps};"),                                 # how many steps
        (r"if \(step % 10 == 0\)", "if (step == 0)"),                           # val loss at step 0 only
        (r"if \(step > 0 && step % 20 == 0\)", "if (0)"),                       # no text sampling
    ]
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text)
        if n != 1:
            raise SystemExit(f"llmc_speed.py: expected one {pattern!r} in train_gpt2.c's main, found {n}: this "
                             f"llm.c version differs from the one the script was written for (May 2025); "
                             f"update patch_source()")
    return text


def build_llmc(llmc_dir, workdir, B, T, steps):
    with open(os.path.join(llmc_dir, "train_gpt2.c")) as f:
        source = patch_source(f.read(), B, T, steps)
    src = os.path.join(workdir, "train_gpt2.c")
    with open(src, "w") as f:
        f.write(source)
    exe = os.path.join(workdir, "train_gpt2")
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise SystemExit(f"no C compiler {cc!r} to build llm.c: install one (e.g. apt install gcc) or set CC")
    cmd = [cc, "-Ofast", "-march=native", "-fopenmp", "-DOMP", "-Wno-unused-result", "-I", llmc_dir, src,
           "-lm", "-o", exe]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"building llm.c failed: {' '.join(cmd)}\n{out.stderr}")
    return exe, " ".join(cmd[:6])


def prepare(name, llmc_dir, root):
    """A directory where llm.c's patched main finds its checkpoint and tokens; numgpt's val loss."""
    import numpy as np

    from numgpt.model import GPT, GPTConfig

    L, H, C, T, B, V = CONFIGS[name]
    workdir = os.path.join(root, name)
    data = os.path.join(workdir, "dev", "data", "tinyshakespeare")
    os.makedirs(data)
    warm, timed = LLMC_STEPS[name]
    exe, how = build_llmc(llmc_dir, workdir, B, T, warm + timed - 1)      # steps 0..N
    model = GPT(GPTConfig(V, T, L, H, C), seed=0)
    write_llmc_checkpoint(model, os.path.join(workdir, "gpt2_124M.bin"))
    rng = np.random.default_rng(1)
    write_llmc_tokens(rng.integers(0, V, 64 * B * T + 1), os.path.join(data, "tiny_shakespeare_train.bin"))
    val = rng.integers(0, V, VAL_BATCHES * B * T + 1)
    write_llmc_tokens(val, os.path.join(data, "tiny_shakespeare_val.bin"))
    # llm.c's unshuffled loader: batch i is val[i B T : (i+1) B T + 1], inputs and targets shifted by one
    losses = []
    for i in range(VAL_BATCHES):
        chunk = val[i * B * T:(i + 1) * B * T + 1]
        losses.append(model.loss(chunk[:-1].reshape(B, T), chunk[1:].reshape(B, T)))
    return workdir, exe, how, float(np.mean(losses))


# --- timing ----------------------------------------------------------------------------------

def run_llmc(exe, workdir, threads, warmup):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([exe], cwd=workdir, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"llm.c failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    steps = [(int(s), float(loss), float(ms)) for s, loss, ms in
             re.findall(r"step (\d+): train loss ([-\d.naif]+) \(took ([\d.]+) ms\)", out.stdout)]
    val = re.findall(r"val loss ([-\d.naif]+)", out.stdout)
    if not steps or not val:
        raise RuntimeError(f"could not read llm.c's output:\n{out.stdout[-2000:]}")
    return {"times": [ms / 1000 for s, _, ms in steps if s >= warmup], "loss0": steps[0][1],
            "val0": float(val[0])}


def run_numgpt(name, threads):
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "NUMGPT_THREADS", "OMP_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "--worker", "numgpt", "--configs", name]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"numgpt worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_numgpt(name):
    sys.path.insert(0, HERE)
    from train_speed import worker_numgpt as train_speed_step       # the step as train_speed.py times it

    warmup, steps = NUMGPT_STEPS[name]
    times, workers = train_speed_step(CONFIGS[name], steps, warmup)
    return {"times": times, "workers": workers}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llmc", default=None, help="llm.c's source directory (holds train_gpt2.c)")
    parser.add_argument("--configs", nargs="+", default=["baby", "gpt2"], choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per config")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker_numgpt(args.configs[0])))
        return

    if not args.llmc or not os.path.isfile(os.path.join(args.llmc, "train_gpt2.c")):
        where = f"{args.llmc!r} holds no train_gpt2.c" if args.llmc else "no --llmc directory given"
        print(f"llmc_speed.py: {where}.\n{HOW_TO_GET}", file=sys.stderr)
        return 2
    llmc_dir = os.path.abspath(args.llmc)

    root = tempfile.mkdtemp(prefix="numgpt_llmc_speed_")
    try:
        print(f"training step: numgpt against llm.c's train_gpt2.c ({llmc_dir}); {args.threads} thread(s), "
              f"{os.cpu_count()} cores")
        for name in args.configs:
            L, H, C, T, B, V = CONFIGS[name]
            t0 = time.perf_counter()
            workdir, exe, how, numgpt_val = prepare(name, llmc_dir, root)
            print(f"\n== {name}: {L} layers x {H} heads x {C}, block {T}, batch {B}, vocab {V} "
                  f"(llm.c pads it to {padded_vocab(V)}); built with {how} ...; prepared in "
                  f"{time.perf_counter() - t0:.0f} s ==")
            tokens = B * T
            rounds = {"numgpt": [], "llm.c": []}
            for r in range(args.rounds):
                n = run_numgpt(name, args.threads)
                m = run_llmc(exe, workdir, args.threads, LLMC_STEPS[name][0])
                if r == 0:
                    print(f"step-0 loss check: llm.c val loss {m['val0']:.6f}, numgpt's loss on the same weights and "
                          f"batches {numgpt_val:.6f}; llm.c's first train loss {m['loss0']:.4f}; ln V = "
                          f"{math.log(V):.4f}")
                    if abs(m["val0"] - numgpt_val) > 1e-3:
                        raise AssertionError("llm.c's loss differs from numgpt's on the same weights: was the "
                                             "checkpoint read right?")
                rounds["numgpt"].append(statistics.median(n["times"]))
                rounds["llm.c"].append(statistics.median(m["times"]))
                print(f"round {r + 1}: numgpt {1000 * rounds['numgpt'][-1]:8.1f} ms/step ({n['workers']}), "
                      f"llm.c {1000 * rounds['llm.c'][-1]:8.1f} ms/step; numgpt/llm.c tokens/s "
                      f"{rounds['llm.c'][-1] / rounds['numgpt'][-1]:.2f}")
            ms = {k: 1000 * statistics.median(v) for k, v in rounds.items()}
            ratios = [m / n for n, m in zip(rounds["numgpt"], rounds["llm.c"])]
            print(f"median: numgpt {ms['numgpt']:.1f} ms/step ({tokens / ms['numgpt'] * 1000:,.0f} tokens/s), "
                  f"llm.c {ms['llm.c']:.1f} ms/step ({tokens / ms['llm.c'] * 1000:,.0f} tokens/s); numgpt/llm.c "
                  f"tokens/s {statistics.median(ratios):.2f} (rounds {', '.join(f'{x:.2f}' for x in ratios)})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
