"""The training loop: evaluate, step, log, checkpoint, until done or asked to stop.

``train(TrainConfig(...))`` does what ``numgpt train`` does, from a notebook
as well as from the command line. Each iteration:

1. every ``eval_interval`` steps (and at the end), the mean train/val loss
   over ``eval_iters`` batches; a checkpoint when the validation loss
   improved (and at the end);
2. the learning rate from the warmup + cosine schedule, forward/backward over
   ``gradient_accumulation_steps`` micro-batches, global-norm clipping, one
   optimizer step; every ``log_interval`` steps a progress line.

The optimizer is AdamW, or (``optimizer="muon"``) Muon for the hidden layers'
2-D weights (:func:`numgpt.muon.hidden_matrices`) and AdamW for the rest, as the
modded-nanoGPT speedrun trains: Muon's learning rate follows the same
schedule, scaled to ``muon_lr``. With ``max_time`` the run ends once its
training steps took that many seconds, and the schedule runs on the fraction
of that time spent instead of on iterations.

The rooms around it: the settings are declared in :mod:`numgpt.config`, the
data is prepared by :mod:`numgpt.data`, checkpoints are written by
:mod:`numgpt.checkpoint`, and :mod:`numgpt.rundir` guards ``out_dir`` (one
trainer at a time, no silent replacement of a trained model, one metrics log
per run).

Nothing is lost:

* checkpoints are written atomically; if writing one fails (a full disk), the
  previous one stays intact and training stops with one sentence saying so;
* the checkpoint holds the latest state (what ``--resume`` continues); when
  that is worse on validation than an earlier one, the best is kept beside
  it as ``best.npz`` (``numgpt sample --best``), so training past the best
  never loses it;
* a non-finite loss or gradient norm stops the run, naming the iteration,
  without touching the last good checkpoint;
* SIGINT (Ctrl-C) and SIGTERM (what ``timeout``, Slurm and Kubernetes send)
  finish the current step, save and return; more signals while that happens
  change nothing, so the checkpoint on disk is always complete and never
  behind the metrics log.

More than one process: under ``mpiexec -n N`` (see :mod:`numgpt.parallel.mpi`)
every rank trains its share of each global batch and the gradients are summed
over the ranks; rank 0 alone holds the run directory, writes the checkpoint
and the metrics log and prints, and broadcasts the starting state (fresh or
resumed) so that every rank starts identical. Steps that may fail on one rank
only are agreed on by all (:func:`numgpt.parallel.mpi.agree`); any other
error on a rank aborts the job with that rank's message.

Determinism: the training batches (and dropout masks) come from one
``numpy.random.Generator`` whose state is saved in every checkpoint;
evaluation batches come from generators seeded by (seed, iteration). A
resumed run therefore reproduces the losses of an uninterrupted one exactly.
"""

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

from ._atomic import atomic_keep
from ._blas import set_blas_threads
from ._malloc import tune_malloc
from .checkpoint import BEST_CHECKPOINT_NAME, CHECKPOINT_NAME, load_checkpoint, load_checkpoint_meta, load_run, save_run
from .config import TrainConfig, load_config_file, resume_settings
from .data import DataError, prepare_data
from .model import GPT, GPTConfig, param_views
from .muon import Muon, fused_parts, hidden_matrices
from .optim import AdamW, clip_scale, cosine_lr, decay_mask_from_layout, grad_norm, ranges_outside
from .parallel import DataParallel, WorkerProcessDied, default_processes, default_threads
from .parallel.mpi import (agree, max_over_ranks, mpi_world, quiet_other_ranks, stop_job_on_error,
                           workers_per_rank)
from .rundir import METRICS_NAME, RunDirectory, describe_os_error
from .sample import generate, generate_text

__all__ = ["train", "TrainConfig", "TrainResult", "TrainingError", "StopSignals", "Stopped", "load_config_file", "estimate_loss",
           "CHECKPOINT_NAME", "METRICS_NAME"]


class TrainingError(RuntimeError):
    """Training stopped: the message says why and at which iteration."""


@dataclass
class TrainResult:
    model: GPT
    tokenizer: object
    iter_num: int
    best_val_loss: float
    last_eval: dict
    losses: list                 # training loss of every iteration run in this call
    checkpoint: str
    interrupted: bool = False
    samples: list = None
    accuracy: float = None
    stop_signal: int = None      # signal.SIGINT or signal.SIGTERM if one stopped the run
    best_checkpoint: str = None  # best.npz when the checkpoint is not the best-validation state, else None
    best_is_legacy: bool = False  # best.npz is a checkpoint resumed from that predates recorded val losses


def train(cfg, log=print, *, stop=None):
    """Run training as configured; returns a :class:`TrainResult`.

    ``stop`` is a :class:`StopSignals` the caller has entered (the CLI does, so
    that signals arriving after training stay harmless until it exits); by
    default train installs its own for the duration of the call.

    Raises :class:`TrainingError` on a non-finite loss or gradient norm or a
    checkpoint that cannot be written, ``RunDirError`` when ``out_dir`` cannot
    be used as asked, ``DataError`` for unusable data, ``CheckpointError``
    for an unusable checkpoint, and :class:`Stopped` for a signal that came
    before training began (nothing was written then).

    Under an MPI launcher (``mpiexec -n N``, or ``NUMGPT_MPI=1``) every rank
    calls this and trains one model together (``batch_size`` is the global
    batch); only rank 0 logs and writes, and the other ranks' standard
    output is discarded from here on (their errors still reach standard error).
    """
    cfg = dataclasses.replace(cfg).validate()
    comm = mpi_world()                  # None unless this process is one rank of an MPI job
    if comm is not None:
        quiet_other_ranks(comm)
    with stop_job_on_error(comm):
        return _train(cfg, log if comm is None or comm.Get_rank() == 0 else _quiet, comm, stop)


def _train(cfg, log, comm, stop):
    with contextlib.ExitStack() as stack:
        if stop is None:
            stop = stack.enter_context(StopSignals())
        run_dir = stack.enter_context(_run_directory(cfg, log, comm))
        run = _Run.start(cfg, run_dir, log, comm)
        cfg, model = run.cfg, run.model
        metrics = run_dir.open_metrics(run.iter_num if cfg.resume else None)
        tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
        budget = f" or {cfg.max_time:g} s of training steps, whichever ends first" if cfg.max_time else ""
        if cfg.eval_only:
            log(f"evaluating only (eval_only): {cfg.eval_iters} batches per split, nothing trained or saved")
        else:
            log(f"training: {cfg.max_iters} iterations{budget}, {tokens_per_iter:,} tokens each; "
                f"out_dir {cfg.out_dir}")
            if cfg.resume and run.iter_num >= cfg.max_iters:
                log(f"note: max_iters counts all the run's iterations, and the checkpoint is at {run.iter_num} "
                    f"already: nothing to train (a larger --max_iters continues it)")
        losses, last_eval, accuracy, stop_signal = [], {}, None, None
        start, ema_ms = time.perf_counter(), None
        stop.armed = True               # from here on a signal means: finish the step, save, return
        try:
            while True:
                done = run.iter_num >= cfg.max_iters or (cfg.max_time > 0 and run.train_seconds >= cfg.max_time)
                if run.iter_num % cfg.eval_interval == 0 or done:
                    last_eval, accuracy, line = run.evaluate()
                    _record(metrics, {"iter": run.iter_num, "train_loss": last_eval["train"],
                                      "val_loss": last_eval["val"], "train_time": run.train_seconds,
                                      **({"accuracy": accuracy} if accuracy is not None else {})})
                    improved = last_eval["val"] < run.best_val
                    if improved:
                        run.best_val = last_eval["val"]
                    if not cfg.eval_only and (improved or done):
                        line += " | " + run.save("best val" if improved else "end", val_loss=last_eval["val"],
                                                 best=improved)
                    log(line)
                if done or cfg.eval_only:
                    break
                signum = stop.signal if comm is None else max_over_ranks(comm, stop.signal or 0) or None
                if signum is not None:              # (under MPI: every rank stops at this iteration)
                    stop_signal = signal.Signals(signum)
                    saved = f"{run.checkpoint_path} is up to date" if run.saved_iter == run.iter_num \
                        else run.save(_SIGNAL_NAMES[stop_signal])
                    log(f"{_SIGNAL_NAMES[stop_signal]}: {saved} at iteration {run.iter_num}")
                    break

                t0 = time.perf_counter()
                lr = run.learning_rate()
                rng_state = run.rng.bit_generator.state
                try:
                    loss, norm = run.step(lr)
                except WorkerProcessDied as e:
                    if comm is not None:        # the other ranks wait in the all-reduce: the job must abort
                        raise
                    # The step failed before the optimizer ran: the parameters and moments are the last
                    # step's. Saved with the generator as it was then, a resume redraws this very batch.
                    run.rng.bit_generator.state = rng_state
                    saved = f"{run.checkpoint_path} is up to date" if run.saved_iter == run.iter_num \
                        else run.save("a worker process died")
                    raise TrainingError(f"{e} (killed, or by the out-of-memory killer); {saved} at iteration "
                                        f"{run.iter_num}. Continue with numgpt train --resume --out_dir "
                                        f"{cfg.out_dir} (with a smaller batch if memory ran out)") from None
                losses.append(loss)
                dt_ms = (time.perf_counter() - t0) * 1000
                run.add_train_time(dt_ms / 1000)
                ema_ms = dt_ms if ema_ms is None else 0.9 * ema_ms + 0.1 * dt_ms
                if run.iter_num % cfg.log_interval == 0 or run.iter_num == cfg.max_iters:
                    tok_s = tokens_per_iter / (dt_ms / 1000)
                    eta = (cfg.max_iters - run.iter_num) * ema_ms / 1000
                    if cfg.max_time:
                        eta = min(eta, max(0.0, cfg.max_time - run.train_seconds))
                    log(f"iter {run.iter_num:>6} | loss {loss:.4f} | lr {lr:.2e} | {dt_ms:6.1f} ms/iter | "
                        f"{tok_s:8,.0f} tok/s | elapsed {_format_seconds(time.perf_counter() - start)} | "
                        f"eta {_format_seconds(eta)}")
                    _record(metrics, {"iter": run.iter_num, "loss": loss, "lr": lr, "ms_per_iter": dt_ms,
                                      "tokens_per_s": tok_s, "grad_norm": norm,
                                      "train_time": run.train_seconds})
        finally:
            metrics.close()
            run.dp.close()              # the worker processes, if any

    samples = None
    if cfg.sample_tokens and run.tokenizer is not None and stop_signal is None and run.dp.rank == 0:
        samples = generate_text(model, run.tokenizer, "", num_samples=1, max_new_tokens=cfg.sample_tokens,
                                temperature=0.8, top_k=None, seed=cfg.seed)
        log("sample:\n" + samples[0])
    best_checkpoint = run.best_path if os.path.exists(run.best_path) else None
    return TrainResult(model, run.tokenizer, run.iter_num, run.best_val, last_eval, losses, run_dir.checkpoint_path,
                       stop_signal is not None, samples, accuracy, stop_signal, best_checkpoint,
                       best_checkpoint is not None and _is_legacy(best_checkpoint))


def _is_legacy(path):
    """Whether the checkpoint at ``path`` predates recorded val losses, so its own val loss is unknown."""
    try:
        return "val_loss" not in load_checkpoint_meta(path)
    except (OSError, ValueError):     # unreadable now: claim nothing about it
        return False


class _Run:
    """The state a run carries from step to step: model, optimizer, data, generator and position.

    ``dp`` is the model wrapped for batch parallelism (numgpt.parallel); the
    optimizer works on its buffers.
    """

    def __init__(self, cfg, dp, optimizer, data, rng, checkpoint_path, iter_num=0, best_val=float("inf"),
                 muon=None):
        self.cfg, self.dp, self.model, self.optimizer, self.data, self.rng = cfg, dp, dp.model, optimizer, data, rng
        self.muon = muon             # the Muon of the hidden matrices under --optimizer muon, else None
        self.tokenizer = data.tokenizer
        self.checkpoint_path, self.iter_num, self.best_val = checkpoint_path, iter_num, best_val
        self.train_seconds = 0.0     # time spent in training steps (evaluations and checkpoints excluded)
        self.saved_iter = None       # the iteration of the last checkpoint this run wrote
        self.saved_is_best = False   # whether the checkpoint on disk holds the best-validation state
        self.saved_is_legacy = False  # whether it predates recorded val losses (so might hold the best)
        self.best_path = os.path.join(os.path.dirname(checkpoint_path), BEST_CHECKPOINT_NAME)

    @classmethod
    def start(cls, cfg, run_dir, log, comm=None):
        """A fresh run (a new model, or GPT-2 weights to fine-tune) or the one saved in ``run_dir``.

        Under MPI every rank builds its own (a failure on any rank fails all),
        then rank 0's parameters, optimizer state, generator and position are
        broadcast, so all ranks start identical.
        """
        loaded = _load_saved_run(run_dir.checkpoint_path, np.dtype(cfg.dtype), comm) if cfg.resume else None
        n_workers = None if comm is None else workers_per_rank(comm)     # (a collective: not inside agree)
        run = agree(comm, cls._build, cfg, run_dir, log, comm, loaded, n_workers)
        if comm is not None:
            run._share_state_of_rank_0()
        mem = run.dp.memory_estimate(run.cfg.batch_size * run.cfg.gradient_accumulation_steps, run.cfg.block_size)
        model = run.model
        log(f"model: {model.config.n_layer} layers x {model.config.n_head} heads x {model.config.n_embd}, "
            f"block {model.config.block_size}; number of parameters: {model.num_params_report() / 1e6:.2f}M; "
            f"memory estimate {mem['total'] / 2**20:.0f} MiB ({run.cfg.dtype})")
        log(f"architecture: {describe_architecture(run.cfg, model.config)}; optimizer: {run.describe_optimizer()}")
        log(f"parallel: {run.dp.describe()} per step")
        return run

    @classmethod
    def _build(cls, cfg, run_dir, log, comm, loaded, n_workers):
        """The run as this process builds it; no collectives in here (a failure on one rank must not
        leave the others waiting: see agree)."""
        dtype = np.dtype(cfg.dtype)
        saved = None
        tokenizer = None
        tune_malloc()           # recycle freed activation buffers (see numgpt/_malloc.py)
        if cfg.resume:
            model, tokenizer, meta, arrays = loaded
            settings, notes = resume_settings(meta.get("train_config"), cfg.to_dict())
            for note in notes:
                log(f"note: {note}")
            cfg = TrainConfig(**settings).validate()
            saved = (meta, arrays)
        elif cfg.init_from and not cfg.task:
            from .gpt2 import load_gpt2_tokenizer
            tokenizer = load_gpt2_tokenizer(cfg.init_from)
            if tokenizer is None:
                raise ValueError(f"--init_from {cfg.init_from}: no GPT-2 tokenizer files beside the weights "
                                 "(vocab.json + merges.txt, tokenizer.json, or encoder.json + vocab.bpe); fine-tuning needs the "
                                 "tokenizer the weights were trained with")
        try:
            data = prepare_data(cfg.data, block_size=cfg.block_size, task=cfg.task, tokenizer_kind=cfg.tokenizer,
                                vocab_size=cfg.vocab_size, tokenizer=tokenizer, log=log)
        except DataError as e:
            recorded_path = cfg.data not in ("default", "shakespeare", "") and not os.path.isabs(cfg.data)
            if saved is not None and not cfg.task and recorded_path and not os.path.exists(cfg.data):
                # The run recorded its --data as given, relative to the directory it was started in.
                raise DataError(f"{e}: the run in {cfg.out_dir} recorded its --data relative to the directory it "
                                f"was started in, not {os.getcwd()}; resume from that directory, or give "
                                f"--data") from None
            raise
        log(f"data: {data.description}; vocabulary {data.vocab_size}")
        if data.tokenizer is not None:
            log(f"tokens: {len(data.train_ids):,} train, {len(data.val_ids):,} val")

        if saved is None:
            model, cfg = _new_model(cfg, data, dtype, log)
        if cfg.task:
            cfg = dataclasses.replace(cfg, block_size=model.config.block_size)
        if model.config.dropout != cfg.dropout:
            model.config = dataclasses.replace(model.config, dropout=cfg.dropout)

        # Forked worker processes when they pay (small models; see DataParallel), else threads. Under
        # MPI the machine's cores are shared among its ranks, one BLAS thread per worker.
        if comm is None:
            # More workers than a micro-batch has rows would idle (and, as processes, cost a fork each).
            wanted = default_threads()
            if wanted > cfg.batch_size and os.environ.get("NUMGPT_THREADS"):
                log(f"note: {wanted} workers asked for (NUMGPT_THREADS), but a micro-batch has {cfg.batch_size} "
                    f"rows: {cfg.batch_size} workers")
            dp = DataParallel(model, min(wanted, cfg.batch_size), processes=default_processes())
        else:
            set_blas_threads(n_workers)
            dp = DataParallel(model, n_workers, processes=default_processes(), comm=comm)
        # Built on the wrapper's buffers: wrapping may have moved the parameters into shared memory.
        muon, adamw_ranges = None, None
        if cfg.optimizer_name() == "muon":
            matrices = hidden_matrices(model.layout)
            params, grads = param_views(dp.flat_params, model.layout), param_views(dp.flat_grads, model.layout)
            muon = Muon([params[name] for name, _, _ in matrices], [grads[name] for name, _, _ in matrices],
                        lr=cfg.muon_lr, momentum=cfg.muon_momentum, n_threads=dp.n_workers,
                        parts=[fused_parts(name) for name, _, _ in matrices])   # c_attn's q, k, v apart
            adamw_ranges = ranges_outside(model.num_params, [(start, stop) for _, start, stop in matrices])
        optimizer = AdamW(dp.flat_params, dp.flat_grads, decay_mask_from_layout(model.layout),
                          lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                          n_threads=dp.n_workers, ranges=adamw_ranges)
        run = cls(cfg, dp, optimizer, data, np.random.default_rng(cfg.seed), run_dir.checkpoint_path, muon=muon)
        if saved is not None:
            run._restore(*saved, log)
            log(f"resumed from {run_dir.checkpoint_path} at iteration {run.iter_num}")
        return run

    def describe_optimizer(self):
        cfg = self.cfg
        adamw = (f"AdamW (lr {cfg.learning_rate:g}, betas {cfg.beta1:g}/{cfg.beta2:g}, "
                 f"weight decay {cfg.weight_decay:g})")
        if self.muon is None:
            return adamw
        return (f"Muon for the {len(self.muon.params)} hidden matrices (lr {cfg.muon_lr:g}, momentum "
                f"{cfg.muon_momentum:g}), {adamw} for the rest")

    def learning_rate(self):
        """AdamW's learning rate for the next step: warmup + cosine on the iteration, or with ``max_time``
        on the fraction of the time budget spent (scaled to lr_decay_iters: see TrainConfig.max_time)."""
        cfg = self.cfg
        position = self.iter_num if not cfg.max_time else self.train_seconds / cfg.max_time * cfg.lr_decay_iters
        return cosine_lr(position, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)

    def add_train_time(self, seconds):
        """Count ``seconds`` of training step; under MPI with ``max_time`` every rank takes rank 0's clock,
        since the learning rate and the end of the run depend on it and must agree."""
        self.train_seconds += seconds
        if self.cfg.max_time and self.dp.comm is not None:
            self.train_seconds = self.dp.comm.bcast(self.train_seconds, root=0)

    def _share_state_of_rank_0(self):
        """MPI: every rank takes rank 0's parameters, optimizer state, generator state and position."""
        comm = self.dp.comm
        muon_buffers = self.muon.buffers if self.muon is not None else []
        for buffer in (self.model.flat_params, self.optimizer.m, self.optimizer.v, *muon_buffers):
            comm.Bcast(buffer, root=0)
        state = (self.optimizer.t, self.muon.t if self.muon is not None else 0, self.rng.bit_generator.state,
                 self.iter_num, self.best_val, self.train_seconds)
        self.optimizer.t, muon_t, rng_state, self.iter_num, self.best_val, self.train_seconds = \
            comm.bcast(state, root=0)
        if self.muon is not None:
            self.muon.t = muon_t
        self.rng.bit_generator.state = rng_state

    def _restore(self, meta, arrays, log=None):
        if "optim/m" in arrays:
            self.optimizer.load_state_dict({"m": arrays["optim/m"], "v": arrays["optim/v"], "t": meta["optimizer_t"]})
        saved_optimizer = meta.get("optimizer", "adamw")      # (checkpoints older than Muon: AdamW)
        if saved_optimizer != self.cfg.optimizer_name() and log is not None:
            fresh = "Muon's momentum starts" if self.muon is not None else \
                "AdamW's moments of the hidden matrices start"
            log(f"note: the checkpoint was trained with {saved_optimizer}; continuing with "
                f"{self.cfg.optimizer_name()} ({fresh} from zero)")
        if self.muon is not None and "optim/muon_m" in arrays:
            sizes = [m.size for m in self.muon.buffers]
            pieces = np.split(arrays["optim/muon_m"], np.cumsum(sizes)[:-1])
            buffers = [piece.reshape(m.shape) for piece, m in zip(pieces, self.muon.buffers)]
            self.muon.load_state_dict({"buffers": buffers, "t": meta["muon_t"]})
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        if meta.get("rng_state"):
            self.rng.bit_generator.state = meta["rng_state"]
        self.iter_num = int(meta["iter_num"])
        self.best_val = meta["best_val_loss"] if meta.get("best_val_loss") is not None else float("inf")
        self.saved_is_best = meta.get("val_loss") is not None and meta["val_loss"] == meta.get("best_val_loss")
        # A checkpoint from before val_loss was recorded cannot tell whether it holds its run's best
        # (that code saved at every new best and at the end), so it is kept aside like a best.
        self.saved_is_legacy = "val_loss" not in meta

    def step(self, lr):
        """One optimizer step at learning rate ``lr``: ``(loss, gradient norm before clipping)``."""
        cfg, model = self.cfg, self.model
        drop_rng = self.rng if cfg.dropout > 0 else None
        loss = 0.0
        n_micro = cfg.gradient_accumulation_steps
        for micro in range(n_micro):
            # Under MPI every rank draws the same global batch and trains its rows; the gradients are
            # summed over the ranks once per step, after the last micro-batch (sync).
            x, y = self.data.batch("train", cfg.batch_size, cfg.block_size, self.rng)
            micro_loss, _ = self.dp.loss_and_grads(x, y, dropout_rng=drop_rng, accumulate=micro > 0,
                                                   loss_scale=1.0 / n_micro, sync=micro == n_micro - 1)
            loss += micro_loss / n_micro
        norm = grad_norm(model.flat_grads, n_threads=self.dp.n_workers)   # on the workers' threads
        # Clipping is the optimizers' grad_scale, not a scaling pass over the buffer: the same update.
        grad_scale = clip_scale(norm, cfg.grad_clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
            kept = f"the last good checkpoint {self.checkpoint_path} is kept" \
                if os.path.exists(self.checkpoint_path) else "no checkpoint had been saved yet"
            raise _on_every_rank(TrainingError(f"non-finite {what} at iteration {self.iter_num}; training stopped "
                                               f"and {kept}. Try a smaller --learning_rate or --grad_clip."), self.dp)
        self.optimizer.step(lr, grad_scale=grad_scale)
        if self.muon is not None:      # Muon's rate follows AdamW's schedule (with learning_rate 0, both are 0)
            self.muon.step(lr / cfg.learning_rate * cfg.muon_lr if cfg.learning_rate > 0 else 0.0,
                           grad_scale=grad_scale)
        self.iter_num += 1
        return loss, norm

    def evaluate(self):
        """``(losses, task accuracy or None, log line)`` at the current iteration."""
        losses = estimate_loss(self.dp, self.data, self.cfg, self.iter_num)
        line = f"eval {self.iter_num:>6} | train {losses['train']:.4f} | val {losses['val']:.4f}"
        accuracy = None
        if self.data.task is not None:
            accuracy = task_accuracy(self.model, self.data.task, n=500, seed=self.cfg.seed)
            line += f" | test accuracy {accuracy:.1%}"
        return losses, accuracy, line

    def save(self, reason, val_loss=None, best=False):
        """Write the checkpoint; a failure leaves the previous one intact and stops training with one sentence.

        ``val_loss`` is this state's validation loss if it was just evaluated,
        ``best`` whether that is the best so far. The checkpoint is also what
        ``--resume`` continues, so it always takes the latest state; when that
        state is not the best and the checkpoint on disk is, the best is first
        kept as ``best.npz`` (a hard link where the file system allows, no
        copy), which goes again once a later best reaches the checkpoint.
        Under MPI rank 0 writes and every rank learns whether that worked.
        """
        if self.dp.comm is not None:
            return agree(self.dp.comm, self._save if self.dp.rank == 0 else lambda *args, **kwargs: "",
                         reason, val_loss, best)
        return self._save(reason, val_loss, best)

    def _save(self, reason, val_loss=None, best=False):
        task = {"name": self.cfg.task} if self.cfg.task else None
        keep_best = not best and (self.saved_is_best or self.saved_is_legacy) and os.path.exists(self.checkpoint_path)
        try:
            if keep_best:
                atomic_keep(self.checkpoint_path, self.best_path)
            save_run(self.checkpoint_path, self.model, self.optimizer, self.tokenizer, self.cfg, self.iter_num,
                     self.best_val, self.rng, task, muon=self.muon, train_seconds=self.train_seconds,
                     val_loss=val_loss)
        except OSError as e:
            if keep_best:              # the checkpoint still holds the best: best.npz would only repeat it
                with contextlib.suppress(OSError):
                    os.unlink(self.best_path)
            try:
                kept = f"the previous checkpoint (iteration {load_checkpoint(self.checkpoint_path)[1]['iter_num']}) " \
                       f"is intact"
            except Exception:
                kept = "no earlier checkpoint exists"
            raise TrainingError(f"{describe_os_error(e, f'could not save the checkpoint at iteration {self.iter_num}', self.checkpoint_path)}"
                                f"; {kept}. Training stopped; once the problem is fixed, continue with "
                                f"numgpt train --resume --out_dir {self.cfg.out_dir}") from None
        self.saved_iter = self.iter_num
        kept_legacy = keep_best and self.saved_is_legacy
        self.saved_is_best, self.saved_is_legacy = best, False
        if best:                       # the checkpoint holds the best now; an older best.npz is superseded
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.best_path)
        kept = ""
        if kept_legacy:
            kept = f"; the checkpoint resumed from (older than recorded val losses) stays in {self.best_path}"
        elif keep_best:
            kept = f"; the best val {self.best_val:.4f} stays in {self.best_path}"
        return f"saved {self.checkpoint_path} ({reason}){kept}"


def _new_model(cfg, data, dtype, log):
    if cfg.init_from:
        from .gpt2 import gpt2_positions, load_gpt2
        model = load_gpt2(cfg.init_from, dtype=dtype, block_size=cfg.block_size)
        if model.config.vocab_size != data.vocab_size:
            whose = f"the task {cfg.task!r} has its own vocabulary of" if cfg.task else "its tokenizer has"
            raise ValueError(f"--init_from {cfg.init_from} has vocab_size {model.config.vocab_size} but {whose} "
                             f"{data.vocab_size} tokens")
        n_positions = gpt2_positions(cfg.init_from)
        if cfg.block_size < n_positions:
            log(f"note: block_size {cfg.block_size} keeps the first {cfg.block_size} of the model's {n_positions} "
                f"positions (the others are not in this run's checkpoints); --block_size {n_positions} keeps all")
        log(f"fine-tuning {cfg.init_from}; the model's own size settings replace --n_layer/--n_head/--n_embd")
        cfg = dataclasses.replace(cfg, n_layer=model.config.n_layer, n_head=model.config.n_head,
                                  n_embd=model.config.n_embd, bias=model.config.bias, tokenizer="bpe")
        return model, cfg
    block = data.task.block_size if cfg.task else cfg.block_size
    config = GPTConfig(vocab_size=data.vocab_size, block_size=block, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, **cfg.model_choices())
    _check_fits_in_memory(config, dtype)
    return GPT(config, seed=cfg.seed, dtype=dtype), cfg


def _check_fits_in_memory(config, dtype):
    """Refuse, before building it, a model whose parameters, gradients and AdamW moments alone exceed
    the machine's memory: a mistyped size (``--n_layer 100000000``) would otherwise spend minutes laying
    out the parameters and then fail, or swap, with no word about which setting was too large."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):        # not a POSIX system: nothing to compare with
        return
    C = config.n_embd
    params = config.n_layer * 13 * C * C + (config.vocab_size + config.block_size) * C     # about; SwiGLU ~ GELU
    need = 4 * params * np.dtype(dtype).itemsize
    if need > memory:
        raise ValueError(f"a model of n_layer {config.n_layer} x n_embd {C}, vocabulary {config.vocab_size} and "
                         f"block_size {config.block_size} has about {params:,.0f} parameters: "
                         f"{need / 2**30:,.0f} GiB with their gradients and AdamW's moments, more than this "
                         f"machine's {memory / 2**30:.0f} GiB; make n_layer, n_embd, block_size or the "
                         f"vocabulary smaller")


def describe_architecture(cfg, config):
    """``preset gpt2 (layernorm, learned positions, gelu MLP, ...)``: the run's preset and the model's choices."""
    return (f"preset {cfg.preset} ({config.norm}, {config.position} positions, {config.mlp} MLP, "
            f"{'QK-norm' if config.qk_norm else 'no QK-norm'}, {'tied' if config.tie_head else 'untied'} head, "
            f"{'biases' if config.bias else 'no biases'})")


def estimate_loss(model, data, cfg, it):
    """Mean loss over ``eval_iters`` batches of each split, from generators seeded by (seed, it).

    ``model``: a GPT or a ``numgpt.parallel.DataParallel`` (which splits each batch, across MPI ranks too).
    """
    out = {}
    for k, split in enumerate(("train", "val")):
        rng = np.random.default_rng([cfg.seed, it, k])
        losses = [model.loss(*data.batch(split, cfg.batch_size, cfg.block_size, rng)) for _ in range(cfg.eval_iters)]
        out[split] = float(np.mean(losses))
    return out


def task_accuracy(model, task, n=500, seed=0):
    """Exact-match accuracy of greedy decoding on ``n`` held-out problems of ``task``."""
    def predict(prompts):
        out = generate(model, prompts, task.answer_length, temperature=0)
        return out[:, prompts.shape[1]:]
    return task.evaluate(predict, n, np.random.default_rng(seed), batch_size=250)


def _load_saved_run(path, dtype, comm):
    """``load_run``'s ``(model, tokenizer, meta, arrays)``; under MPI rank 0 reads the checkpoint and
    the other ranks build the model from its metadata (parameters and optimizer state follow by
    broadcast), so the checkpoint need only be on rank 0's disk."""
    if comm is None:
        return load_run(path, dtype=dtype)
    rank0 = comm.Get_rank() == 0
    loaded = agree(comm, lambda: load_run(path, dtype=dtype) if rank0 else None)
    meta = comm.bcast(loaded[2] if rank0 else None, root=0)

    def build():
        if rank0:
            return loaded
        from .tokenizers import tokenizer_from_state

        model = GPT(GPTConfig.from_dict(meta["model_config"]), dtype=dtype, init=False)
        tokenizer = tokenizer_from_state(meta["tokenizer"]) if meta.get("tokenizer") else None
        return model, tokenizer, meta, {}
    return agree(comm, build)


@contextlib.contextmanager
def _run_directory(cfg, log, comm):
    """The locked run directory on rank 0 (all of it without MPI); the other ranks see its paths only."""
    if comm is None or comm.Get_rank() == 0:
        run_dir = RunDirectory(cfg.out_dir, resume=cfg.resume, overwrite=cfg.overwrite, log=log)
    else:
        run_dir = _OtherRankRunDir(cfg.out_dir)
    try:
        agree(comm, run_dir.open)
        yield run_dir
    finally:
        run_dir.close()


class _OtherRankRunDir:
    """What an MPI rank other than 0 sees of the run directory: no lock, no files, nothing written."""

    def __init__(self, out_dir):
        self.checkpoint_path = os.path.join(os.fspath(out_dir), CHECKPOINT_NAME)

    def open(self):
        pass

    def close(self):
        pass

    def open_metrics(self, resume_iter=None):
        return _Discard()


class _Discard:
    name = os.devnull

    def write(self, text):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def _quiet(*args, **kwargs):
    pass


def _on_every_rank(error, dp):
    """Mark ``error`` as raised on every MPI rank alike (no abort needed; only rank 0 reports it)."""
    if dp.comm is not None:
        error.collective = True
        error.mpi_quiet = dp.rank != 0
    return error


def _record(metrics, entry):
    try:
        metrics.write(json.dumps(entry) + "\n")
        metrics.flush()
    except OSError as e:
        raise TrainingError(describe_os_error(e, f"could not write the metrics log at iteration {entry['iter']}", metrics.name)
                            + "; the last checkpoint is intact. Once the problem is fixed, continue with "
                              "numgpt train --resume") from None


def _format_seconds(s):
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


_SIGNAL_NAMES = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}


class Stopped(KeyboardInterrupt):
    """A signal arrived before training began, so there was nothing to save: the run stops at once."""

    def __init__(self, signum):
        super().__init__(f"stopped by {signal.Signals(signum).name} before training began; nothing was written")
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM become a request to stop after the current step, however many arrive.

    Until training begins (``armed`` False) a signal stops at once by raising
    :class:`Stopped`: there is nothing to save yet. Once armed, the handlers
    only record the first signal, so no signal can cut a step or a checkpoint
    write short: the run stops at a step boundary with a complete checkpoint.
    (``kill -9`` still ends a stuck process at once.) The previous handlers
    come back when the context ends.
    """

    def __init__(self):
        self.signal = None
        self.armed = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.armed:
            raise Stopped(signum)
        if self.signal is None:
            self.signal = signum

    def ignore_after(self):
        """On leaving the context, ignore these signals instead of restoring the old handlers.

        For a program about to exit once training has ended: a late signal then
        has nothing left to stop and must not kill it (exit code 143, not -15).
        """
        self._previous = {signum: signal.SIG_IGN for signum in self._previous}

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False
