"""Greedy generation on GPT-2 124M: numgpt's `numgpt sample` path against Hugging Face `generate`.

    python benchmarks/generate_speed.py                     # needs torch and transformers
    python benchmarks/generate_speed.py --threads 2 1 --rounds 5 --new_tokens 200 --prompt_tokens 32

What is compared, on the same weights and the same prompt:

- **numgpt**: ``numgpt.gpt2.load_gpt2`` and ``numgpt.sample.generate`` with ``temperature=0`` and its
  key/value cache, the calls ``numgpt sample --init_from DIR --temperature 0`` makes (``generate_text``
  adds only the tokenizer's encode and decode around them, which are not timed here: offline there
  is no GPT-2 vocabulary, so the prompt is given as token ids).
- **Hugging Face**: ``transformers.GPT2LMHeadModel.from_pretrained(DIR)`` and its
  ``generate(..., do_sample=False, use_cache=True)`` (greedy, with its key/value cache), float32,
  under ``torch.inference_mode()``, the model's default attention implementation (printed).

The weights are random (numgpt's GPT-2 initialisation, seed 0), written once in the Hugging Face
layout with numgpt's ``save_gpt2`` into a temporary directory, and loaded from there by both. The
prompt is ``--prompt_tokens`` ids drawn with a fixed seed. The end-of-text id is not a stop token
for either (a random model may well pick it), so both always make ``--new_tokens`` tokens.

Per measurement, in a fresh process: load, a warm-up generation of 4 tokens, then the time to
first token (a generation of one token: the prompt's forward and the first pick; the median of 3)
and one timed generation of ``--new_tokens`` tokens (tokens/s = new tokens / its wall time, prompt
included). The two frameworks alternate, ``--rounds`` times, for each thread count; each round and
the medians are printed. Threads: numgpt gets OPENBLAS_NUM_THREADS (its matmuls are NumPy's),
PyTorch ``torch.set_num_threads``; OMP_NUM_THREADS and MKL_NUM_THREADS are set for both.

Both must pick the same ids (greedy on the same weights); float32 round-off in a different order
of summation may flip a near tie late in the sequence, so the script reports how many of the new
tokens agree (and how many distinct ids there are: a random model's greedy output tends to repeat
itself) and asserts that the first ``--must_agree`` (default 10) do. As a direct check that both
hold the same weights it also prints the largest difference between the two frameworks' logits
over the prompt (computed after the timing).

torch and transformers are not numgpt dependencies; install them for this script only
(``pip install torch transformers``).
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

N_POSITIONS, VOCAB, N_LAYER, N_HEAD, N_EMBD = 1024, 50257, 12, 12, 768
WARMUP_TOKENS = 4
TTFT_REPEATS = 3


def make_weights(directory, prompt_tokens, seed=0):
    """Random GPT-2 124M weights in the Hugging Face layout, and the prompt ids."""
    import numpy as np

    from numgpt.gpt2 import save_gpt2
    from numgpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(VOCAB, N_POSITIONS, N_LAYER, N_HEAD, N_EMBD), seed=seed)
    save_gpt2(model, directory)
    prompt = np.random.default_rng(seed + 1).integers(0, VOCAB, prompt_tokens).tolist()
    with open(os.path.join(directory, "prompt.json"), "w") as f:
        json.dump(prompt, f)
    return prompt


# --- workers (each in a fresh process) ----------------------------------------------------------

def worker_numgpt(directory, prompt, new_tokens):
    import numpy as np

    from numgpt.gpt2 import load_gpt2
    from numgpt.sample import generate

    model = load_gpt2(directory, dtype=np.float32)                # as `numgpt sample --init_from` loads
    idx = np.asarray([prompt], dtype=np.int64)

    def run(n):
        t0 = time.perf_counter()
        out = generate(model, idx, n, temperature=0, use_cache=True)
        return time.perf_counter() - t0, out[0, len(prompt):].tolist()

    run(WARMUP_TOKENS)
    ttft = statistics.median(run(1)[0] for _ in range(TTFT_REPEATS))
    total, ids = run(new_tokens)
    np.save(os.path.join(directory, "logits_numgpt.npy"), model.forward(idx)[0])      # untimed: the check
    return {"ttft": ttft, "total": total, "ids": ids, "what": f"numgpt, NumPy {np.__version__}"}


def worker_hf(directory, prompt, new_tokens, threads):
    import numpy as np
    import torch
    import transformers
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    model, info = GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if k != "lm_head.weight"]
    if missing or info.get("unexpected_keys") or info.get("mismatched_keys"):
        raise RuntimeError(f"transformers did not load every weight: {info}")
    if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to wte")
    model.eval()
    config = model.generation_config
    config.eos_token_id = None             # no stop token, as numgpt's generate (a random model may pick 50256)
    config.pad_token_id = 0
    idx = torch.tensor([prompt], dtype=torch.long)
    mask = torch.ones_like(idx)

    def run(n):
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model.generate(idx, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                 use_cache=True, num_beams=1)
            return time.perf_counter() - t0, out[0, len(prompt):].tolist()

    run(WARMUP_TOKENS)
    ttft = statistics.median(run(1)[0] for _ in range(TTFT_REPEATS))
    total, ids = run(new_tokens)
    with torch.inference_mode():
        np.save(os.path.join(directory, "logits_hf.npy"), model(idx).logits[0].numpy())   # untimed: the check
    what = (f"transformers {transformers.__version__}, torch {torch.__version__}, attention "
            f"{model.config._attn_implementation}")
    return {"ttft": ttft, "total": total, "ids": ids, "what": what}


def run_worker(kind, directory, threads, new_tokens):
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMGPT_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "--worker", kind, "--dir", directory, "--threads", str(threads),
           "--new_tokens", str(new_tokens)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def leading_agreement(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per thread count")
    parser.add_argument("--new_tokens", type=int, default=200)
    parser.add_argument("--prompt_tokens", type=int, default=32)
    parser.add_argument("--must_agree", type=int, default=10, help="assert that this many first new ids agree")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:                         # say so before the 124M weights are built
        raise SystemExit(f"the Hugging Face side needs {' and '.join(missing)} in this Python: "
                         f"pip install torch transformers (or the test extra)")

    if args.worker:
        with open(os.path.join(args.dir, "prompt.json")) as f:
            prompt = json.load(f)
        if args.worker == "numgpt":
            res = worker_numgpt(args.dir, prompt, args.new_tokens)
        else:
            res = worker_hf(args.dir, prompt, args.new_tokens, args.threads[0])
        print(json.dumps(res))
        return

    import numpy as np

    directory = tempfile.mkdtemp(prefix="numgpt_generate_speed_")
    try:
        t0 = time.perf_counter()
        make_weights(directory, args.prompt_tokens)
        print(f"greedy generation, GPT-2 124M (random weights, seed 0, saved by numgpt's save_gpt2 in "
              f"{time.perf_counter() - t0:.0f} s), batch 1, a {args.prompt_tokens}-token prompt, "
              f"{args.new_tokens} new tokens; {os.cpu_count()} cores")
        kinds = ("numgpt", "hf")
        for threads in args.threads:
            print(f"\n== {threads} thread(s) ==")
            res = {k: [] for k in kinds}
            for r in range(args.rounds):
                for kind in kinds:
                    res[kind].append(run_worker(kind, directory, threads, args.new_tokens))
                n, h = res["numgpt"][-1], res["hf"][-1]
                agree = sum(a == b for a, b in zip(n["ids"], h["ids"]))
                lead = leading_agreement(n["ids"], h["ids"])
                diff = float(np.abs(np.load(os.path.join(directory, "logits_numgpt.npy"))
                                    - np.load(os.path.join(directory, "logits_hf.npy"))).max())
                if r == 0 and threads == args.threads[0]:
                    print(f"numgpt: {n['what']}\nHF:     {h['what']}")
                print(f"round {r + 1}: numgpt {args.new_tokens / n['total']:6.2f} tokens/s, TTFT "
                      f"{1000 * n['ttft']:6.0f} ms | HF {args.new_tokens / h['total']:6.2f} tokens/s, TTFT "
                      f"{1000 * h['ttft']:6.0f} ms | tokens/s numgpt/HF {h['total'] / n['total']:.2f}, "
                      f"TTFT HF/numgpt {h['ttft'] / n['ttft']:.2f} | same ids: first {lead}, "
                      f"{agree} of {args.new_tokens} positions ({len(set(n['ids']))} distinct ids); prompt logits "
                      f"max |numgpt - HF| {diff:.1e}")
                if lead < min(args.must_agree, args.new_tokens):
                    raise AssertionError(f"numgpt and HF disagree at new token {lead}: "
                                         f"{n['ids'][:lead + 3]} vs {h['ids'][:lead + 3]}")
            med = {k: {m: statistics.median(x[m] for x in res[k]) for m in ("total", "ttft")} for k in kinds}
            ratios = [h["total"] / n["total"] for n, h in zip(res["numgpt"], res["hf"])]
            print(f"median over {args.rounds} rounds: numgpt {args.new_tokens / med['numgpt']['total']:.2f} "
                  f"tokens/s, HF {args.new_tokens / med['hf']['total']:.2f}; numgpt/HF tokens/s "
                  f"{statistics.median(ratios):.2f} (target >= 1.2; rounds {', '.join(f'{x:.2f}' for x in ratios)}); "
                  f"TTFT numgpt {1000 * med['numgpt']['ttft']:.0f} ms, HF {1000 * med['hf']['ttft']:.0f} ms")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
