"""Tests for numgpt.parallel.forked and DataParallel's worker processes (DataParallel(..., processes=True)).

The processes must give the gradients of one thread (float64, to rounding), see
parameters written after the fork, report a worker's failure in the parent,
survive a step that stopped half way, and end when the model is closed or
collected.
"""

import gc
import os
import signal
import time

import numpy as np
import pytest

import numgpt.layers as layers
import numgpt.parallel.data_parallel as dp_module
from numgpt.model import GPT, PRESETS, GPTConfig
from numgpt.optim import AdamW
from numgpt.parallel import DataParallel, default_processes
from numgpt.parallel.forked import ForkedWorkers, WorkerProcessDied, fork_available, shared_zeros

# Concurrent code: a hang (a worker that never replies) fails the test after 120 s with every thread's
# stack (pytest-timeout, in the test extra) instead of holding CI until it is killed.
pytestmark = [pytest.mark.skipif(not fork_available(), reason="worker processes need Linux's fork"),
              pytest.mark.timeout(120, method="thread")]


def _config(**overrides):
    sizes = {"vocab_size": 13, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 8}
    return GPTConfig(**{**sizes, **overrides})


def _models(config, n_workers=2, seed=0):
    """A plain model and a wrapped one with worker processes, with the same (randomised) parameters."""
    one = GPT(config, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 7)
    one.flat_params[...] = rng.normal(0.0, 0.3, one.num_params)
    forked = DataParallel(GPT(config, dtype=np.float64), n_workers, processes=True)
    forked.flat_params[...] = one.flat_params
    return one, forked


@pytest.fixture
def models():
    """``models(config, n_workers=2)`` -> (plain model, wrapped with worker processes); workers stopped after the test."""
    made = []

    def make(config, n_workers=2, seed=0):
        one, forked = _models(config, n_workers, seed)
        made.append(forked)
        return one, forked

    yield make
    for forked in made:
        forked.close()


def _batch(config, B, T=7, seed=1):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    return idx, targets


def _assert_same_step(forked, one, idx, targets):
    """One step of each model gives the same loss and gradient (float64, to rounding)."""
    loss2, _ = forked.loss_and_grads(idx, targets)
    loss1, _ = one.loss_and_grads(idx, targets)
    assert loss2 == pytest.approx(loss1, rel=1e-13)
    np.testing.assert_allclose(forked.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)


def _worker_pids(model):
    return [p.pid for p in model._workers._procs]


def _alive(pid):
    try:
        os.waitpid(pid, os.WNOHANG)        # reap it if it has ended
    except ChildProcessError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- shared memory and the generic workers ------------------------------------------------------

def _sum_into(shared, k, values):
    shared[k] = float(np.sum(values))
    return ("done", k)


def test_shared_zeros_is_zeroed_and_seen_by_a_forked_worker():
    shared = shared_zeros(5, np.float32)
    assert shared.dtype == np.float32 and shared.shape == (5,) and not shared.any()
    workers = ForkedWorkers(2, lambda k, values: _sum_into(shared, k, values))
    try:
        workers.submit(0, (3, np.arange(4.0)))
        workers.submit(1, (4, np.ones(3)))
        assert workers.result(0) == ("done", 3)
        assert workers.result(1) == ("done", 4)
        np.testing.assert_array_equal(shared, [0, 0, 0, 6, 3])       # written by the children
    finally:
        workers.close()


def test_a_worker_error_is_raised_in_the_parent_with_the_workers_traceback():
    def fails(x):
        if x < 0:
            raise ValueError(f"negative {x}")
        return x * 2

    workers = ForkedWorkers(1, fails)
    try:
        workers.submit(0, (-3,))
        with pytest.raises(ValueError, match="negative -3") as info:
            workers.result(0)
        assert any("worker process 1" in note and "fails" in note for note in info.value.__notes__)
        workers.submit(0, (5,))              # the worker lives on
        assert workers.result(0) == 10
    finally:
        workers.close()


def test_an_unpicklable_error_still_reaches_the_parent():
    class Local(Exception):                  # a local class cannot be pickled
        pass

    def fails():
        raise Local("not picklable")

    workers = ForkedWorkers(1, fails)
    try:
        workers.submit(0, ())
        with pytest.raises(RuntimeError, match="Local: not picklable"):
            workers.result(0)
    finally:
        workers.close()


def test_an_uncollected_reply_is_dropped_before_the_next_job():
    workers = ForkedWorkers(1, lambda x: x + 1)
    try:
        workers.submit(0, (1,))              # the caller "fails" before reading this reply
        workers.submit(0, (10,))
        assert workers.result(0) == 11
    finally:
        workers.close()


def test_close_ends_the_workers_and_refuses_new_jobs():
    workers = ForkedWorkers(3, lambda: None)
    pids = [p.pid for p in workers._procs]
    start = time.monotonic()
    workers.close()
    # Prompt: every worker exits on seeing its pipe closed; none waits for close()'s 2 s
    # fallback that terminates it.
    assert time.monotonic() - start < 1.5
    workers.close()                          # idempotent
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        workers.submit(0, ())


def test_a_killed_worker_is_reported():
    workers = ForkedWorkers(1, lambda: time.sleep(30))
    try:
        workers.submit(0, ())
        os.kill(workers._procs[0].pid, signal.SIGKILL)
        with pytest.raises(WorkerProcessDied, match=r"worker process 1 ended without replying \(exit code -9\)"):
            workers.result(0)
        assert workers.closed
    finally:
        workers.close()


# --- DataParallel's worker processes ------------------------------------------------------------------

@pytest.mark.parametrize("n_workers, B", [(2, 2), (2, 5), (3, 3), (3, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_processes_give_the_gradient_of_one_thread(n_workers, B, bias, models):
    config = _config(bias=bias)
    one, forked = models(config, n_workers)
    idx, targets = _batch(config, B, seed=B)
    targets[0, :3] = -1                      # uneven target counts between the slices
    _assert_same_step(forked, one, idx, targets)
    assert forked._workers is not None and len(forked._workers) == n_workers - 1
    # accumulation with a loss scale adds onto what is there
    one.loss_and_grads(idx, targets, accumulate=True, loss_scale=0.25)
    forked.loss_and_grads(idx, targets, accumulate=True, loss_scale=0.25)
    np.testing.assert_allclose(forked.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("choices", [PRESETS["modern"], {**PRESETS["modern"], "mlp": "swiglu"}],
                         ids=["modern", "modern+swiglu"])
def test_processes_give_the_gradient_of_one_thread_for_a_modern_model(choices, models):
    config = _config(**choices)
    one, forked = models(config, 2)
    idx, targets = _batch(config, 5, seed=5)
    targets[0, :3] = -1                      # uneven target counts between the slices
    _assert_same_step(forked, one, idx, targets)


def test_workers_read_the_parameters_written_after_the_fork(models):
    config = _config()
    one, forked = models(config)
    idx, targets = _batch(config, 4)
    forked.loss_and_grads(idx, targets)          # forks the worker
    pid = _worker_pids(forked)
    for step in range(3):                        # an optimizer-like in-place update each time
        update = np.random.default_rng(step).normal(0.0, 0.1, one.num_params)
        one.flat_params += update
        forked.flat_params[...] += update
        _assert_same_step(forked, one, idx, targets)
    assert _worker_pids(forked) == pid           # the same worker all along


def test_process_dropout_matches_thread_dropout(models):
    config = _config(dropout=0.3)
    _, forked = models(config)
    threaded = DataParallel(GPT(config, dtype=np.float64), 2, processes=False)
    threaded.flat_params[...] = forked.flat_params
    idx, targets = _batch(config, 4)
    a, _ = forked.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(5))
    b, _ = threaded.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(5))
    assert a == pytest.approx(b, rel=1e-13) and a != forked.loss(idx, targets)
    np.testing.assert_allclose(forked.flat_grads, threaded.flat_grads, rtol=1e-11, atol=1e-15)


def test_process_gradients_are_bitwise_reproducible(models):
    config = _config()
    _, forked = models(config)
    idx, targets = _batch(config, 6)
    runs = []
    for _ in range(5):
        forked.loss_and_grads(idx, targets)
        runs.append(forked.flat_grads.copy())
    assert all(np.array_equal(g, runs[0]) for g in runs[1:])


def test_a_failing_worker_process_reports_its_error_and_a_new_worker_recovers(monkeypatch, models):
    config = _config()
    one, forked = models(config)
    idx, targets = _batch(config, 4)
    parent = os.getpid()
    real = layers.gelu_backward

    def fails_in_a_worker_process(dout, cache):
        if os.getpid() != parent:
            raise ArithmeticError("boom in a worker process")
        return real(dout, cache)

    monkeypatch.setattr(layers, "gelu_backward", fails_in_a_worker_process)   # before the fork
    with pytest.raises(ArithmeticError, match="boom in a worker process"):
        forked.loss_and_grads(idx, targets)
    monkeypatch.setattr(layers, "gelu_backward", real)
    forked.close()                       # the worker keeps the code it was forked with
    _assert_same_step(forked, one, idx, targets)


def test_a_step_that_fails_in_the_parent_leaves_the_next_step_right(monkeypatch, models):
    # The worker's reply to the failed step is still in the pipe; it must not be taken
    # for the next step's.
    config = _config()
    one, forked = models(config)
    idx, targets = _batch(config, 4)
    idx2, targets2 = _batch(config, 4, seed=9)
    real = layers.layernorm_backward
    parent = os.getpid()
    forked.loss_and_grads(idx, targets)          # fork with the real code

    def fails_in_the_parent(dout, cache):
        if os.getpid() == parent:
            raise ArithmeticError("boom in the parent")
        return real(dout, cache)

    monkeypatch.setattr(layers, "layernorm_backward", fails_in_the_parent)
    with pytest.raises(ArithmeticError, match="boom in the parent"):
        forked.loss_and_grads(idx, targets)
    monkeypatch.setattr(layers, "layernorm_backward", real)
    _assert_same_step(forked, one, idx2, targets2)


@pytest.mark.parametrize("ended_before_the_step", [False, True])
def test_a_killed_worker_process_fails_the_step_and_the_next_step_forks_anew(ended_before_the_step, models):
    config = _config()
    one, forked = models(config)
    idx, targets = _batch(config, 4)
    forked.loss_and_grads(idx, targets)
    (pid,) = _worker_pids(forked)
    os.kill(pid, signal.SIGKILL)
    if ended_before_the_step:                        # then the job cannot even be sent
        forked._workers._procs[0].join(timeout=5.0)
    with pytest.raises(WorkerProcessDied, match=r"exit code -9" if ended_before_the_step else "ended"):
        forked.loss_and_grads(idx, targets)
    _assert_same_step(forked, one, idx, targets)
    assert _worker_pids(forked) != [pid]


def test_close_and_collection_end_the_worker_processes():
    config = _config()
    _, forked = _models(config)
    idx, targets = _batch(config, 4)
    forked.loss_and_grads(idx, targets)
    pids = _worker_pids(forked)
    forked.close()
    assert not any(_alive(pid) for pid in pids)
    forked.loss_and_grads(idx, targets)              # a later step starts a new worker
    pids = _worker_pids(forked)
    assert all(_alive(pid) for pid in pids)
    del forked
    gc.collect()
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(pid) for pid in pids)


def test_processes_auto_chooses_the_worker_kind(monkeypatch):
    model = GPT(_config())
    assert DataParallel(model, 2).processes is False                     # the library's default: threads
    assert DataParallel(model, 2, processes="auto").processes is True    # a small model on Linux
    assert DataParallel(model, 2, processes="auto", comm=object()).processes is False   # MPI: threads
    monkeypatch.setattr(dp_module, "PROCESS_GRADS_LIMIT", model.num_params * model.dtype.itemsize - 1)
    assert DataParallel(model, 2, processes="auto").processes is False   # a private buffer would exceed the limit
    one_worker = DataParallel(model, 1, processes=True)
    idx, targets = _batch(model.config, 4)
    one_worker.loss_and_grads(idx, targets)          # one worker: nothing to fork
    assert one_worker._workers is None


def test_wrapping_moves_the_parameters_into_shared_memory_and_the_optimizer_follows(models):
    # The workers read the parameters through shared memory, so the wrapper moves them there; an
    # optimizer built on the wrapper's buffers afterwards updates what the workers see.
    config = _config()
    model = GPT(config, seed=5, dtype=np.float64)
    values, old_buffer = model.flat_params.copy(), model.flat_params
    dp = DataParallel(model, 2, processes=True)
    try:
        assert model.flat_params is not old_buffer and dp_module._is_shared(model.flat_params)
        np.testing.assert_array_equal(model.flat_params, values)
        assert all(np.shares_memory(p, model.flat_params) for p in model.params.values())
        opt = AdamW(dp.flat_params, dp.flat_grads, lr=0.1, weight_decay=0.0)
        plain = GPT(config, dtype=np.float64)
        plain_opt = AdamW(plain.flat_params, plain.flat_grads, lr=0.1, weight_decay=0.0)
        plain.flat_params[...] = values
        idx, targets = _batch(config, 4)
        for _ in range(3):
            dp.loss_and_grads(idx, targets)
            plain.loss_and_grads(idx, targets)
            opt.step()
            plain_opt.step()
        np.testing.assert_allclose(dp.flat_params, plain.flat_params, rtol=1e-9, atol=1e-9)
        assert not np.array_equal(dp.flat_params, values)
        DataParallel(model, 2, processes=True).close()      # already shared: left where it is
        assert dp.flat_params is model.flat_params
    finally:
        dp.close()


def test_use_param_buffer_checks_its_buffer():
    model = GPT(_config())
    with pytest.raises(ValueError, match="buffer"):
        model.use_param_buffer(np.zeros(model.num_params, np.float64))
    with pytest.raises(ValueError, match="buffer"):
        model.use_param_buffer(np.zeros(model.num_params - 1, np.float32))


def test_a_new_worker_count_is_a_new_wrapper(models):
    config = _config()
    one, forked = models(config, n_workers=2)
    idx, targets = _batch(config, 6)
    forked.loss_and_grads(idx, targets)
    first = _worker_pids(forked)
    forked.close()
    assert not any(_alive(pid) for pid in first)
    forked = DataParallel(forked.model, 3, processes=True)
    try:
        forked.loss_and_grads(idx, targets)
        assert len(_worker_pids(forked)) == 2
    finally:
        forked.close()
    one.loss_and_grads(idx, targets)
    np.testing.assert_allclose(forked.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("value, expected", [(None, "auto"), ("auto", "auto"), ("1", True), ("0", False),
                                             (" AUTO ", "auto"), ("", "auto"), ("  ", "auto")])
def test_default_processes_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("NUMGPT_PROCESSES", raising=False)
    else:
        monkeypatch.setenv("NUMGPT_PROCESSES", value)
    assert default_processes() == expected


def test_default_processes_rejects_other_values(monkeypatch):
    monkeypatch.setenv("NUMGPT_PROCESSES", "threads")
    with pytest.raises(ValueError, match="NUMGPT_PROCESSES must be 1, 0 or auto, got 'threads'"):
        default_processes()


def test_memory_estimate_counts_the_worker_gradient_buffers():
    model = GPT(_config())
    threads = DataParallel(model, 3, processes=False).memory_estimate(batch_size=4)
    assert threads["worker_gradients"] == 0
    forked = DataParallel(model, 3, processes=True).memory_estimate(batch_size=4)
    assert forked["worker_gradients"] == 2 * model.num_params * 4            # two workers, float32
    assert forked["total"] == threads["total"] + forked["worker_gradients"]
    assert threads["parameters_and_optimizer"] == 4 * model.num_params * 4   # params, grads, m, v


@pytest.mark.parametrize("B", [2, 3, 5])
def test_evaluation_loss_with_processes_is_the_whole_batch_mean(B, models):
    config = _config()
    one, forked = models(config, n_workers=3)
    idx, targets = _batch(config, B, seed=B)
    targets[0, :4] = -1                      # uneven target counts between the slices
    expected = one.loss(idx, targets)
    got = forked.loss(idx, targets)
    assert forked._workers is not None   # the slices really went to the workers
    assert got == pytest.approx(expected, rel=1e-13)
    targets[: B // 2 or 1] = -1          # a slice without targets: evaluated whole instead
    if (targets != -1).any():
        assert forked.loss(idx, targets) == pytest.approx(one.loss(idx, targets), rel=1e-13)
    with pytest.raises(ValueError, match="ignore_index"):
        forked.loss(idx, np.full_like(targets, -1))


def test_a_forked_child_runs_parallel_jobs_on_a_pool_of_its_own():
    # The parent's pool has run jobs, so its threads sit idle; a fork copies the pool but not its
    # threads, and a child that used that copy would wait forever for a job handed to an idle
    # thread that exists only in the parent (one pooled job: no new thread is started for it).
    from numgpt.parallel.threads import run_parallel

    assert run_parallel(lambda x: 2 * x, [(1,), (2,), (3,)]) == [2, 4, 6]
    pid = os.fork()
    if pid == 0:                                    # the child: exit 0 only if the jobs ran
        code = 1
        try:
            signal.alarm(10)                        # a hang ends the child, never the test run
            code = 0 if run_parallel(lambda x: 2 * x, [(4,), (5,)]) == [8, 10] else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's parallel jobs never ran")
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child's parallel jobs failed or hung"


def test_workers_refuse_to_start_without_fork(monkeypatch):
    import numgpt.parallel.forked as forked_module

    monkeypatch.setattr(forked_module, "fork_available", lambda: False)
    with pytest.raises(RuntimeError, match="^forked worker processes need Linux's fork start method$"):
        ForkedWorkers(1, print)


def test_worker_processes_are_named_daemons():
    # Named so that ps and top show whose they are; daemons, so they never outlive the parent.
    workers = ForkedWorkers(2, print)
    try:
        assert [p.name for p in workers._procs] == ["numgpt-worker-1", "numgpt-worker-2"]
        assert all(p.daemon is True for p in workers._procs)
    finally:
        workers.close()


def test_fork_is_used_on_linux_only(monkeypatch):
    # macOS offers the fork start method too, but forking there is unsafe (system frameworks).
    monkeypatch.setattr("sys.platform", "darwin")
    assert not fork_available()


def test_a_closed_set_of_workers_takes_no_jobs():
    workers = ForkedWorkers(1, print)
    workers.close()
    with pytest.raises(RuntimeError, match="^these worker processes are closed$"):
        workers.submit(0, ("x",))


def test_the_thread_pool_grows_to_run_every_job_at_once(monkeypatch):
    # Jobs of one step wait for each other (the gradient sink), so run_parallel must run them all
    # at the same time: a pool left smaller by an earlier call has to grow.
    import threading

    import numgpt.parallel.threads as parallel
    from numgpt.parallel.threads import run_parallel

    monkeypatch.setattr(parallel, "_pool", None)                     # this test's pools, from nothing
    monkeypatch.setattr(parallel, "_pool_size", 0)
    assert run_parallel(lambda x: x, [(1,), (2,)]) == [1, 2]        # a pool of one thread
    assert parallel._pool_size == 1
    barrier = threading.Barrier(4, timeout=20)
    assert run_parallel(lambda x: (barrier.wait(), x)[1], [(k,) for k in range(4)]) == [0, 1, 2, 3]
