"""Tests for numgpt.parallel's threads: DataParallel(model, n_workers, processes=False) and the GradientSink.

Worker threads must give the loss and gradient of one worker (float64, to
rounding), with accumulation, uneven target counts and dropout; their
additions into the one gradient buffer happen in a fixed order, so runs are
bitwise reproducible; a failing worker reports its own error and releases the
others; and a broken order of additions fails the step within seconds.
"""

import time

import numpy as np
import pytest

from numgpt.model import GPT, PRESETS, GPTConfig
from numgpt.parallel import DataParallel, GradientOrderError, GradientSink, WorkerFailed

from test_model import assert_every_slot_overwritten, batch, randomised_model, tiny_config


# --- the batch-parallel fast path ------------------------------------------------------------------------

@pytest.mark.parametrize("B", [1, 2, 3, 5])
def test_threads_give_the_same_loss_and_gradient(B):
    one = randomised_model(tiny_config(n_layer=1))
    two = DataParallel(randomised_model(tiny_config(n_layer=1)), 2)
    idx, targets = batch(one.config, B=B, T=7, seed=B, ignore_fraction=0.3 if B > 1 else 0.0)
    if B == 5:
        targets[:2] = -1            # uneven target counts between the slices
        targets[2, 0] = 4
    loss1, _ = one.loss_and_grads(idx, targets)
    loss2, _ = two.loss_and_grads(idx, targets)
    assert loss2 == pytest.approx(loss1, rel=1e-13)
    assert loss2 == pytest.approx(two.loss(idx, targets), rel=1e-13)
    np.testing.assert_allclose(two.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)
    # and with accumulation and a loss scale
    one.loss_and_grads(idx, targets, accumulate=True, loss_scale=0.25)
    two.loss_and_grads(idx, targets, accumulate=True, loss_scale=0.25)
    np.testing.assert_allclose(two.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)


def test_threads_when_one_slice_has_no_targets():
    one = randomised_model(tiny_config(n_layer=1))
    two = DataParallel(randomised_model(tiny_config(n_layer=1)), 2)
    idx, targets = batch(one.config, B=4, T=5, seed=2)
    targets[:2] = -1                 # the first half of the batch has nothing to predict
    loss1, _ = one.loss_and_grads(idx, targets)
    loss2, _ = two.loss_and_grads(idx, targets)
    assert loss2 == pytest.approx(loss1, rel=1e-13)
    np.testing.assert_allclose(two.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)
    with pytest.raises(ValueError, match="ignore_index"):
        two.loss_and_grads(idx, np.full_like(targets, -1))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_batch_with_one_target_and_one_with_none(n_threads):
    one = randomised_model(tiny_config(n_layer=1))
    model = DataParallel(randomised_model(tiny_config(n_layer=1)), n_threads)
    idx, targets = batch(one.config, B=4, T=5, seed=3)
    targets[...] = -1
    targets[3, 2] = 4                # one target in all: its loss, not an error
    loss, _ = model.loss_and_grads(idx, targets)
    assert loss == pytest.approx(one.loss_and_grads(idx, targets)[0], rel=1e-13)
    np.testing.assert_allclose(model.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)
    with pytest.raises(ValueError, match=r"^every target equals ignore_index=-1: the mean loss over no "
                                         r"targets is undefined$"):
        model.loss_and_grads(idx, np.full_like(targets, -1))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_dropout_runs_on_one_thread_and_on_two(n_threads):
    model = DataParallel(GPT(tiny_config(dropout=0.3), seed=0, dtype=np.float64), n_threads)
    idx, targets = batch(model.model.config, B=4)
    loss, _ = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(5))
    assert loss != model.loss(idx, targets)


def test_dropout_masks_do_not_depend_on_how_the_batch_is_split():
    # Each row's masks come from the step's seed and the row's place in the batch, so 1, 2, 3 or 5
    # workers (5 > 4 rows: one worker idles) give the same loss and gradients to round-off, and leave
    # the run's generator in the same state (the next batches do not shift).
    config = tiny_config(dropout=0.3)
    results = []
    for n_threads in (1, 2, 3, 5):
        model = DataParallel(GPT(config, seed=0, dtype=np.float64), n_threads)
        idx, targets = batch(config, B=4)
        rng = np.random.default_rng(7)
        loss, _ = model.loss_and_grads(idx, targets, dropout_rng=rng)
        results.append((loss, model.flat_grads.copy(), rng.random()))
    one_loss, one_grads, one_next = results[0]
    assert one_loss != DataParallel(GPT(config, seed=0, dtype=np.float64), 1).loss(*batch(config, B=4))
    for loss, grads, following in results[1:]:
        assert loss == pytest.approx(one_loss, rel=1e-13) and following == one_next
        np.testing.assert_allclose(grads, one_grads, rtol=1e-11, atol=1e-15)


def test_threaded_dropout_is_reproducible():
    model = DataParallel(GPT(tiny_config(dropout=0.3), seed=0, dtype=np.float64), 2)
    idx, targets = batch(model.model.config, B=4)
    a, _ = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(1))
    ga = model.flat_grads.copy()
    b, _ = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(1))
    assert a == b and a != model.loss(idx, targets)
    np.testing.assert_array_equal(model.flat_grads, ga)


def test_dropout_masks_follow_the_generator_state():
    # Training saves rng.bit_generator.state in checkpoints and restores it on resume, so the
    # dropout masks must be a function of that state alone (not of how often the generator
    # was used before): a generator restored from a saved state must give the same loss.
    for n_threads in (1, 2):
        model = DataParallel(GPT(tiny_config(dropout=0.3), seed=0, dtype=np.float64), n_threads)
        idx, targets = batch(model.model.config, B=4)
        rng = np.random.default_rng(3)
        model.loss_and_grads(idx, targets, dropout_rng=rng)            # one step of training ...
        state = rng.bit_generator.state                                # ... then a checkpoint
        expected, _ = model.loss_and_grads(idx, targets, dropout_rng=rng)
        restored = np.random.default_rng(3)
        restored.bit_generator.state = state
        got, _ = model.loss_and_grads(idx, targets, dropout_rng=restored)
        assert got == expected, f"n_threads={n_threads}"


def test_n_workers_validation():
    model = GPT(tiny_config())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_workers"):
            DataParallel(model, bad)
    for bad in ("yes", 2, 1.0, None):
        with pytest.raises(ValueError, match="processes"):
            DataParallel(model, 2, processes=bad)


@pytest.mark.parametrize("bias", [True, False])
def test_every_gradient_slot_is_overwritten_without_accumulate(bias):
    # The threads' first addition into each slot copies (GradientSink(overwrite=True)): no zeroing pass.
    model = DataParallel(randomised_model(tiny_config(n_layer=2, bias=bias)), 2)
    idx, targets = batch(model.model.config, B=4)
    assert_every_slot_overwritten(model, idx, targets)


@pytest.mark.parametrize("choices", [PRESETS["modern"], {**PRESETS["modern"], "mlp": "swiglu", "bias": True}],
                         ids=["modern", "modern+swiglu+bias"])
@pytest.mark.parametrize("B", [2, 5])
def test_threads_give_the_same_step_for_a_modern_model(choices, B):
    # An untied head hands wte only its embedding path (0): the sink's path order must not wait for a second.
    one = randomised_model(tiny_config(**choices))
    two = DataParallel(randomised_model(tiny_config(**choices)), 2)
    idx, targets = batch(one.config, B=B, T=7, seed=B, ignore_fraction=0.3)
    loss1, _ = one.loss_and_grads(idx, targets)
    two.flat_grads[...] = np.nan                 # the first addition into each slot must copy
    loss2, _ = two.loss_and_grads(idx, targets)
    assert loss2 == pytest.approx(loss1, rel=1e-13)
    np.testing.assert_allclose(two.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)
    one.loss_and_grads(idx, targets, accumulate=True, loss_scale=0.25)
    two.loss_and_grads(idx, targets, accumulate=True, loss_scale=0.25)
    np.testing.assert_allclose(two.flat_grads, one.flat_grads, rtol=1e-11, atol=1e-15)


def test_threads_leave_the_parameters_where_they_are():
    # Threads share the process's memory: wrapping must not move the buffers an optimizer may hold.
    model = GPT(tiny_config())
    params, grads = model.flat_params, model.flat_grads
    dp = DataParallel(model, 3)
    assert dp.flat_params is params and dp.flat_grads is grads and dp.model is model
    assert dp.memory_estimate(4)["worker_gradients"] == 0




# --- the gradient sink shared by worker threads ------------------------------------------------


def _threaded_model(n_threads=2):
    cfg = GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=8)
    return DataParallel(GPT(cfg, seed=3, dtype=np.float32), n_threads)


def test_threaded_gradients_are_bitwise_reproducible_with_accumulation():
    # Workers add into one buffer in a fixed order, so repeated runs give the same bits
    # even when adding onto gradients already there (accumulate=True).
    model = _threaded_model()
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 17, (6, 8)), rng.integers(0, 17, (6, 8))
    x2, y2 = rng.integers(0, 17, (6, 8)), rng.integers(0, 17, (6, 8))
    runs = []
    for _ in range(15):
        model.loss_and_grads(x, y)
        model.loss_and_grads(x2, y2, accumulate=True, loss_scale=0.5)
        runs.append(model.flat_grads.copy())
    for g in runs[1:]:
        assert np.array_equal(g, runs[0])


def test_a_failing_worker_reports_its_own_error_and_releases_the_others(monkeypatch):
    import threading

    import numgpt.layers as layers

    model = _threaded_model()
    real = layers.gelu_backward

    def fails_off_the_main_thread(dout, cache):
        if threading.current_thread() is not threading.main_thread():
            raise ArithmeticError("boom in a worker")
        return real(dout, cache)

    monkeypatch.setattr(layers, "gelu_backward", fails_off_the_main_thread)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 17, (4, 8)), rng.integers(0, 17, (4, 8))
    with pytest.raises(ArithmeticError, match="boom in a worker"):
        model.loss_and_grads(x, y)
    monkeypatch.setattr(layers, "gelu_backward", real)
    loss, _ = model.loss_and_grads(x, y)          # the model still works afterwards
    assert np.isfinite(loss)


def test_a_failing_first_worker_releases_a_worker_waiting_for_it(monkeypatch):
    # Worker 1 waits for worker 0's additions; if worker 0 (this thread) fails first,
    # worker 1 must be released instead of waiting forever.
    import threading

    import numgpt.layers as layers

    model = _threaded_model()
    real = layers.layernorm_backward

    def fails_on_the_main_thread(dout, cache):
        if threading.current_thread() is threading.main_thread():
            raise ArithmeticError("boom in worker 0")
        return real(dout, cache)

    monkeypatch.setattr(layers, "layernorm_backward", fails_on_the_main_thread)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 17, (4, 8)), rng.integers(0, 17, (4, 8))
    with pytest.raises(ArithmeticError, match="boom in worker 0"):
        model.loss_and_grads(x, y)


# --- a broken order of additions fails the step within seconds instead of hanging it -----------------------
# Every test below runs concurrent code: besides the sink's own deadlock check, pytest-timeout (the
# test extra) ends the run if one hangs anyway, with every thread's stack, instead of letting CI
# wait until it is killed.

CONCURRENT_TIMEOUT = pytest.mark.timeout(120, method="thread")


def _run_workers(sink, steps_per_worker):
    """Run ``steps_per_worker[k](sink)`` on one thread per worker; the exceptions, in worker order."""
    import threading

    errors = [None] * len(steps_per_worker)

    def run(k):
        try:
            steps_per_worker[k](sink)
        except BaseException as e:        # noqa: BLE001  (returned to the test)
            errors[k] = e
            sink.fail()

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(steps_per_worker))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a worker still waits: the sink let it hang"
    return errors


@CONCURRENT_TIMEOUT
def test_sink_adds_in_worker_order_then_path_order():

    grads = {"w": np.zeros(3), "tied": np.zeros(1)}
    order = []

    class Recording(dict):
        def __getitem__(self, name):
            order.append(name)
            return dict.__getitem__(self, name)

    sink = GradientSink(Recording(grads), 3)

    def worker(k):
        def steps(s):
            s.add(k, "tied", np.array([10.0 ** k]), path=0)
            s.add(k, "w", np.full(3, k + 1.0))
            s.add(k, "tied", np.array([100.0 * 10.0 ** k]), path=1)
            s.finish(k)
        return steps

    assert _run_workers(sink, [worker(2), worker(1), worker(0)][::-1]) == [None] * 3
    np.testing.assert_array_equal(grads["w"], [6.0, 6.0, 6.0])
    assert grads["tied"][0] == 111.0 + 11100.0
    assert order.count("tied") == 6 and order.count("w") == 3


@CONCURRENT_TIMEOUT
@pytest.mark.parametrize("waited", ["path", "worker"])
def test_sink_reports_a_turn_that_can_never_come(waited):
    # "path": nobody adds path 0 of a tied gradient (the lm-head half dropped), so path 1 can
    # never go. "worker": worker 0 skips a parameter, so worker 1's turn for it never comes.

    additions = {"path": [[("wte", 1)], [("wte", 1)]],                # nobody adds ("wte", 0)
                 "worker": [[("wte", 0)], [("wpe", 0), ("wte", 0)]]}[waited]   # worker 0 skips wpe
    sink = GradientSink({"wte": np.zeros(2), "wpe": np.zeros(2)}, 2)

    def worker(k):
        def steps(s):
            for name, path in additions[k]:
                s.add(k, name, np.ones(2), path)
            s.finish(k)
        return steps

    start = time.monotonic()
    errors = _run_workers(sink, [worker(0), worker(1)])
    assert time.monotonic() - start < 10
    primary = [e for e in errors if e is not None and not isinstance(e, WorkerFailed)]
    assert len(primary) == 1 and isinstance(primary[0], GradientOrderError), errors
    message = str(primary[0])
    if waited == "path":
        assert "'wte' (path 1)" in message and "all 2 workers to have added path 0 (0 have)" in message
    else:
        assert "worker 1 waits to add 'wpe' (path 0), which needs 1 earlier worker(s) to have added it (0 have)" \
            in message and "finished: workers [0]" in message


@CONCURRENT_TIMEOUT
def test_sink_wait_ends_after_its_timeout_when_another_worker_is_stuck(monkeypatch):
    # Worker 0 never adds nor finishes (stuck outside the sink): worker 1 must not wait forever.

    monkeypatch.setattr(GradientSink, "timeout", 0.3)
    sink = GradientSink({"w": np.zeros(2)}, 2)
    sink.add(1, "w", np.ones(2))
    start = time.monotonic()
    with pytest.raises(GradientOrderError, match=r"no worker added a gradient for 0.3 s: worker 1 waits to add 'w'"):
        sink.finish(1)
    assert 0.3 <= time.monotonic() - start < 10


@CONCURRENT_TIMEOUT
@pytest.mark.parametrize("bug", ["lm-head half of wte dropped", "worker order off by one"])
def test_a_broken_order_fails_the_threaded_step_within_seconds(monkeypatch, bug):
    # The two-worker step, with the bugs that used to hang it: the tied wte's lm-head path never
    # added, or the turn arithmetic off by one. Either must raise a clear error at once.

    if bug == "lm-head half of wte dropped":
        real_add = GradientSink.add

        def add(self, worker, name, value, path=0):
            if not (name == "wte" and path == 0):
                real_add(self, worker, name, value, path)
        monkeypatch.setattr(GradientSink, "add", add)
        match = r"'wte' \(path 1\), which needs 0 earlier worker\(s\).*all 2 workers to have added path 0 \(0 have\)"
    else:
        def turn(self, worker, name, path):
            return self._added.get((name, path), 0) == worker + 1 and \
                (path == 0 or self._added.get((name, path - 1), 0) == self.n_workers)
        monkeypatch.setattr(GradientSink, "_turn", turn)
        match = r"worker 0 waits to add"
    model = _threaded_model()
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 17, (4, 8)), rng.integers(0, 17, (4, 8))
    start = time.monotonic()
    with pytest.raises(GradientOrderError, match=match):
        model.loss_and_grads(x, y)
    assert time.monotonic() - start < 10
    monkeypatch.undo()
    loss, _ = model.loss_and_grads(x, y)          # the pool and the model still work
    assert np.isfinite(loss)


@CONCURRENT_TIMEOUT
@pytest.mark.parametrize("case", ["tied", "skipped"])
def test_sink_error_says_what_each_worker_waits_for(case):
    # The whole message, with counts that are not zero. "tied": worker 1 never adds path 0 of the
    # tied "t", so both wait for path 1. "skipped": of three workers, worker 1 never adds "w".
    if case == "tied":
        additions = [[("t", 0), ("t", 1)], [("t", 1)]]
        expected = ("gradient additions out of order, no worker can ever add again: "
                    "worker 0 waits to add 't' (path 1), which needs 0 earlier worker(s) to have added it (0 have) "
                    "and all 2 workers to have added path 0 (1 have); "
                    "worker 1 waits to add 't' (path 1), which needs 1 earlier worker(s) to have added it (0 have) "
                    "and all 2 workers to have added path 0 (1 have)")
    else:
        additions = [[("t", 0), ("w", 0), ("t", 1)], [("t", 0), ("t", 1)], [("t", 0), ("w", 0), ("t", 1)]]
        expected = ("gradient additions out of order, no worker can ever add again: "
                    "worker 2 waits to add 'w' (path 0), which needs 2 earlier worker(s) to have added it (1 have); "
                    "finished: workers [0, 1]")
    sink = GradientSink({"t": np.zeros(1), "w": np.zeros(1)}, len(additions))
    # No worker calls sink.fail() here: the error itself must release the others.
    errors = [None] * len(additions)

    def run(k):
        try:
            for name, path in additions[k]:
                sink.add(k, name, np.ones(1), path)
            sink.finish(k)
        except Exception as e:            # noqa: BLE001  (checked below)
            errors[k] = e

    import threading
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(additions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a worker still waits after the error"
    reported = [e for e in errors if isinstance(e, GradientOrderError)]
    assert len(reported) == 1 and str(reported[0]) == expected, errors
    # the other waiting workers were released with WorkerFailed
    released = [e for e in errors if e is not None and e is not reported[0]]
    assert all(type(e) is WorkerFailed and str(e) == "another worker of this step failed" for e in released)
    assert len(released) == (1 if case == "tied" else 0)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 7])
def test_parallel_add_equals_a_plain_addition(n_threads):
    # The forked workers' gradients are summed with parallel_add: any split gives dst + src exactly.
    from numgpt.parallel.threads import parallel_add
    rng = np.random.default_rng(n_threads)
    for n in (0, 1, 5, 100_003):
        dst = rng.standard_normal(n).astype(np.float32)
        src = rng.standard_normal(n).astype(np.float32)
        want = dst + src
        parallel_add(dst, src, n_threads)
        np.testing.assert_array_equal(dst, want)
