"""Tests for the presets, --optimizer muon and --max_time in training and checkpoints.

* a preset resolves to full GPTConfig choices in TrainConfig.model_choices(),
  the settings override it, and the optimizer follows the preset unless set;
* --optimizer muon trains the hidden matrices with Muon and the rest with
  AdamW (whose moments stay zero on Muon's ranges); a run of N steps equals
  N/2 + resume + N/2, bit for bit, Muon's state included;
* a checkpoint records the choices and the optimizer; one written before
  presets existed (no new keys) still resumes exactly and loads to sample;
  load_run refuses an unknown optimizer or preset and Muon state of the wrong size;
* --init_from refuses any architecture but GPT-2's, naming the settings;
* --max_time stops by the time spent in training steps, ends with an
  evaluation and a checkpoint, and runs the schedule on the time budget.
"""

import types

import numpy as np
import pytest

from numgpt.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, load_run, save_checkpoint
from numgpt.config import ARCHITECTURE_SETTINGS, TrainConfig, resume_settings
from numgpt.model import PRESETS
from numgpt.muon import hidden_matrices
from numgpt.optim import cosine_lr
from numgpt.train import _Run, train
from test_train import english_text, quiet, tiny

NEW_SETTINGS = ("preset", "norm", "position", "mlp", "qk_norm", "tie_head", "optimizer", "muon_lr",
                "muon_momentum", "max_time")
NEW_MODEL_FIELDS = ("norm", "position", "mlp", "qk_norm", "tie_head")


@pytest.fixture
def textfile(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


# --- resolving a preset --------------------------------------------------------------------------

def test_presets_resolve_to_full_model_choices_and_an_optimizer():
    assert TrainConfig().model_choices() == PRESETS["gpt2"]
    assert TrainConfig().optimizer_name() == "adamw"
    modern = TrainConfig(preset="modern")
    assert modern.model_choices() == PRESETS["modern"]
    assert modern.model_choices() == {"norm": "rmsnorm", "position": "rope", "mlp": "relu2", "qk_norm": True,
                                      "tie_head": False, "bias": False}
    assert modern.optimizer_name() == "muon"
    assert TrainConfig(preset="modern", optimizer="adamw").optimizer_name() == "adamw"
    assert TrainConfig(optimizer="muon").optimizer_name() == "muon"


def test_settings_override_a_part_of_the_preset():
    choices = TrainConfig(preset="modern", mlp="swiglu", qk_norm=False, bias=True).validate().model_choices()
    assert choices == {**PRESETS["modern"], "mlp": "swiglu", "qk_norm": False, "bias": True}
    choices = TrainConfig(norm="rmsnorm", position="rope", tie_head=False).validate().model_choices()
    assert choices == {**PRESETS["gpt2"], "norm": "rmsnorm", "position": "rope", "tie_head": False}
    # an old config file's bias=True (the default before presets) keeps meaning biases
    assert TrainConfig(bias=True).model_choices()["bias"] is True
    assert TrainConfig(bias=False).model_choices()["bias"] is False


@pytest.mark.parametrize("overrides, match", [
    ({"preset": "llama"}, "preset must be one of 'gpt2', 'modern', got 'llama'"),
    ({"norm": "batchnorm"}, "norm must be one of"),
    ({"position": "alibi"}, "position must be one of"),
    ({"mlp": "relu"}, "mlp must be one of"),
    ({"qk_norm": "yes"}, "qk_norm must be true, false or unset"),
    ({"tie_head": 1}, "tie_head must be true, false or unset"),
    ({"bias": "false"}, "bias must be true, false or unset"),
    ({"optimizer": "sgd"}, "optimizer must be one of"),
    ({"muon_lr": -0.1}, "muon_lr must be a finite number >= 0"),
    ({"muon_momentum": 1.0}, r"muon_momentum must be in \[0, 1\)"),
    ({"max_time": float("inf")}, "max_time must be a finite number >= 0"),
    ({"max_time": -1}, "max_time must be a finite number >= 0"),
])
def test_new_settings_are_validated(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**overrides).validate()


def test_model_choices_are_architecture_settings():
    assert {"preset", "norm", "position", "mlp", "qk_norm", "tie_head", "bias"} <= set(ARCHITECTURE_SETTINGS)
    assert not {"optimizer", "muon_lr", "muon_momentum", "max_time"} & set(ARCHITECTURE_SETTINGS)


# --- GPT-2 weights need GPT-2's architecture --------------------------------------------------------

def test_init_from_refuses_any_other_architecture():
    with pytest.raises(ValueError) as info:
        TrainConfig(init_from="gpt2", preset="modern").validate()
    message = str(info.value)
    assert message.startswith("--init_from loads GPT-2 weights, which need --preset gpt2; --preset modern (")
    assert "norm='rmsnorm'" in message and "position='rope'" in message and "tie_head=False" in message
    assert message.endswith("cannot hold them")
    with pytest.raises(ValueError, match=r"--preset gpt2 \(mlp='swiglu'\) cannot hold them"):
        TrainConfig(init_from="gpt2", mlp="swiglu").validate()
    with pytest.raises(ValueError, match=r"\(qk_norm=True\)"):
        TrainConfig(init_from="gpt2", qk_norm=True).validate()
    # the modern preset brought back to GPT-2's architecture by hand is accepted
    TrainConfig(init_from="gpt2", preset="modern", norm="layernorm", position="learned", mlp="gelu",
                qk_norm=False, tie_head=True).validate()


# --- the model and the optimizer of a run ---------------------------------------------------------

def test_the_run_builds_the_model_of_its_choices(textfile, tmp_path):
    result = train(tiny(textfile, tmp_path / "run", max_iters=2, preset="modern", mlp="swiglu"), log=quiet)
    config = result.model.config
    assert (config.norm, config.position, config.mlp, config.qk_norm, config.tie_head, config.bias) == \
        ("rmsnorm", "rope", "swiglu", True, False, False)
    meta = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)[1]
    assert {k: meta["model_config"][k] for k in NEW_MODEL_FIELDS} == \
        {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "qk_norm": True, "tie_head": False}
    assert meta["optimizer"] == "muon" and meta["muon_t"] == 2
    assert meta["train_config"]["preset"] == "modern"


def test_hidden_matrices_are_the_attention_and_mlp_weights(textfile, tmp_path):
    result = train(tiny(textfile, tmp_path / "run", max_iters=1, n_layer=2), log=quiet)
    found = hidden_matrices(result.model.layout)
    assert [name for name, _, _ in found] == [f"h.{i}.{part}.weight" for i in range(2) for part in
                                              ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    for name, start, stop in found:
        assert np.shares_memory(result.model.flat_params[start:stop], result.model.params[name])
        assert stop - start == result.model.params[name].size


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest(textfile, tmp_path):
    out = tmp_path / "run"
    before = train(tiny(textfile, tmp_path / "init", max_iters=0), log=quiet).model.flat_params.copy()
    result = train(tiny(textfile, out, optimizer="muon"), log=quiet)
    arrays, meta = load_checkpoint(out / CHECKPOINT_NAME)
    owned = np.zeros(result.model.num_params, dtype=bool)
    for _, start, stop in hidden_matrices(result.model.layout):
        owned[start:stop] = True
    # AdamW never touched Muon's ranges: its moments there are still zero
    assert not arrays["optim/m"][owned].any() and not arrays["optim/v"][owned].any()
    assert (arrays["optim/v"][~owned] > 0).any()
    moved = result.model.flat_params != before
    assert moved[owned].mean() > 0.99 and moved[~owned].any()
    assert arrays["optim/muon_m"].shape == (owned.sum(),) and np.abs(arrays["optim/muon_m"]).max() > 0
    assert meta["optimizer"] == "muon" and meta["muon_t"] == meta["optimizer_t"] == 12


def test_muon_orthogonalises_q_k_v_of_c_attn_apart(textfile, tmp_path, monkeypatch):
    from numgpt import muon as muon_module

    seen = []
    original = muon_module.Muon.step
    monkeypatch.setattr(muon_module.Muon, "step", lambda self, lr=None, grad_scale=1.0: (
        seen.append(list(self.parts)), original(self, lr, grad_scale))[1])
    result = train(tiny(textfile, tmp_path / "m", optimizer="muon", max_iters=1), log=quiet)
    names = [name for name, _, _ in hidden_matrices(result.model.layout)]
    assert seen and seen[0] == [3 if name.endswith(".attn.c_attn.weight") else 1 for name in names]
    assert seen[0].count(3) == result.model.config.n_layer


def test_muon_changes_the_training(textfile, tmp_path):
    adamw = train(tiny(textfile, tmp_path / "a"), log=quiet)
    muon = train(tiny(textfile, tmp_path / "m", optimizer="muon"), log=quiet)
    assert adamw.losses[0] == muon.losses[0] and adamw.losses[1:] != muon.losses[1:]
    assert muon.losses[-1] < muon.losses[0]


def test_muon_learning_rate_follows_the_schedule(textfile, tmp_path, monkeypatch):
    from numgpt import muon as muon_module

    rates = []
    original = muon_module.Muon.step
    monkeypatch.setattr(muon_module.Muon, "step", lambda self, lr=None, grad_scale=1.0: (
        rates.append(lr), original(self, lr, grad_scale))[1])
    cfg = tiny(textfile, tmp_path / "run", optimizer="muon", muon_lr=0.05)
    train(cfg, log=quiet)
    expected = [cosine_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
                / cfg.learning_rate * 0.05 for it in range(cfg.max_iters)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)


@pytest.mark.parametrize("extra", [{"optimizer": "muon"}, {"preset": "modern", "dtype": "float64"},
                                   {"preset": "modern", "optimizer": "adamw"},
                                   {"optimizer": "muon", "gradient_accumulation_steps": 2, "dropout": 0.1}],
                         ids=["muon", "modern-float64", "modern-adamw", "muon-accumulation-dropout"])
def test_resume_reproduces_an_uninterrupted_run(textfile, tmp_path, extra):
    N = 12
    whole = train(tiny(textfile, tmp_path / "whole", max_iters=N, **extra), log=quiet)
    first = train(tiny(textfile, tmp_path / "split", max_iters=N // 2, **extra), log=quiet)
    second = train(TrainConfig.resumed(str(tmp_path / "split"), log=quiet, max_iters=N), log=quiet)
    assert second.iter_num == N
    assert first.losses + second.losses == whole.losses
    np.testing.assert_array_equal(second.model.flat_params, whole.model.flat_params)
    whole_arrays = load_checkpoint(tmp_path / "whole" / CHECKPOINT_NAME)[0]
    split_arrays = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)[0]
    assert set(whole_arrays) == set(split_arrays)
    for key in whole_arrays:
        if key.startswith("optim/"):
            np.testing.assert_array_equal(split_arrays[key], whole_arrays[key])


def test_resume_takes_the_preset_from_the_checkpoint(textfile, tmp_path):
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=2, preset="modern"), log=quiet)
    notes = []
    cfg = TrainConfig.resumed(str(out), log=notes.append, max_iters=4, preset="gpt2", qk_norm=False)
    assert cfg.preset == "modern" and cfg.qk_norm is None and cfg.optimizer_name() == "muon"
    assert "note: preset='modern' comes from the checkpoint (not 'gpt2')" in notes
    assert train(cfg, log=quiet).model.config.qk_norm is True


def test_resume_may_change_the_optimizer_with_a_note(textfile, tmp_path):
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=2), log=quiet)
    lines = []
    result = train(TrainConfig.resumed(str(out), log=quiet, max_iters=4, optimizer="muon"), log=lines.append)
    assert "note: the checkpoint was trained with adamw; continuing with muon (Muon's momentum starts from zero)" \
        in lines
    assert result.iter_num == 4
    assert load_checkpoint(out / CHECKPOINT_NAME)[1]["optimizer"] == "muon"
    lines = []
    train(TrainConfig.resumed(str(out), log=quiet, max_iters=6, optimizer="adamw"), log=lines.append)
    assert "note: the checkpoint was trained with muon; continuing with adamw (AdamW's moments of the hidden " \
           "matrices start from zero)" in lines
    arrays, meta = load_checkpoint(out / CHECKPOINT_NAME)
    assert meta["optimizer"] == "adamw" and "optim/muon_m" not in arrays and meta["iter_num"] == 6


def test_muon_with_a_zero_learning_rate_changes_nothing(textfile, tmp_path):
    start = train(tiny(textfile, tmp_path / "init", max_iters=0), log=quiet).model.flat_params.copy()
    result = train(tiny(textfile, tmp_path / "run", optimizer="muon", learning_rate=0.0, min_lr=0.0,
                        max_iters=3), log=quiet)
    np.testing.assert_array_equal(result.model.flat_params, start)


# --- checkpoints from before the presets ----------------------------------------------------------

def _make_old_format(path):
    """Rewrite a gpt2-preset AdamW checkpoint as a numgpt from before presets and Muon wrote it."""
    arrays, meta = load_checkpoint(path)
    assert meta.pop("optimizer") == "adamw"
    for key in ("muon_t", "train_seconds"):
        meta.pop(key)
    for key in NEW_MODEL_FIELDS:
        meta["model_config"].pop(key)
    for key in NEW_SETTINGS:
        meta["train_config"].pop(key)
    meta["train_config"]["bias"] = True      # the old default, saved explicitly
    assert not any(key.startswith("optim/muon") for key in arrays)
    save_checkpoint(path, arrays, meta)


def test_an_old_checkpoint_resumes_exactly_and_loads(textfile, tmp_path):
    from numgpt.checkpoint import load_for_inference

    N = 8
    whole = train(tiny(textfile, tmp_path / "whole", max_iters=N), log=quiet)
    train(tiny(textfile, tmp_path / "old", max_iters=N // 2), log=quiet)
    _make_old_format(tmp_path / "old" / CHECKPOINT_NAME)
    model, tokenizer, meta, _ = load_run(tmp_path / "old" / CHECKPOINT_NAME)
    assert (model.config.norm, model.config.position, model.config.mlp, model.config.qk_norm,
            model.config.tie_head, model.config.bias) == ("layernorm", "learned", "gelu", False, True, True)
    assert load_for_inference(tmp_path / "old")[0].config == model.config
    # the user's --preset modern cannot turn the old GPT-2 model into another architecture
    notes = []
    cfg = TrainConfig.resumed(str(tmp_path / "old"), log=notes.append, max_iters=N, preset="modern")
    assert cfg.preset == "gpt2" and cfg.model_choices() == PRESETS["gpt2"] and cfg.optimizer_name() == "adamw"
    assert notes == ["note: preset='gpt2' comes from the checkpoint (not 'modern')"]
    second = train(cfg, log=quiet)
    assert second.losses == whole.losses[N // 2:]
    np.testing.assert_array_equal(second.model.flat_params, whole.model.flat_params)


def test_resume_settings_of_an_old_train_config():
    saved = {"n_layer": 2, "bias": False, "learning_rate": 1e-3}
    settings, notes = resume_settings(saved, {"preset": "modern", "norm": "rmsnorm", "optimizer": "muon"})
    assert settings["preset"] == "gpt2" and settings["norm"] == "" and settings["bias"] is False
    assert settings["optimizer"] == "muon"          # not an architecture setting: the user's
    assert len(notes) == 2


# --- what load_run refuses --------------------------------------------------------------------------

@pytest.fixture
def muon_checkpoint(textfile, tmp_path):
    train(tiny(textfile, tmp_path / "run", max_iters=2, optimizer="muon"), log=quiet)
    return tmp_path / "run" / CHECKPOINT_NAME


def _rewrite(path, change):
    arrays, meta = load_checkpoint(path)
    change(arrays, meta)
    save_checkpoint(path, arrays, meta)


@pytest.mark.parametrize("change, match", [
    (lambda a, m: m.update(optimizer="sgd"), r"optimizer must be one of \('adamw', 'muon'\), got 'sgd'"),
    (lambda a, m: m.update(optimizer="adamw"), "holds Muon state .* but its optimizer is 'adamw'"),
    (lambda a, m: a.update({"optim/muon_m": a["optim/muon_m"][:-1]}), "optim/muon_m must be a float vector of"),
    (lambda a, m: a.update({"optim/muon_m": a["optim/muon_m"].astype(np.int32)}), "optim/muon_m must be a float"),
    (lambda a, m: m.update(muon_t=-1), "muon_t must be a non-negative integer, got -1"),
    (lambda a, m: m["train_config"].update(preset="ancient"), "train_config preset must be one of .* got 'ancient'"),
    (lambda a, m: m["train_config"].update(preset=["modern"]),
     r"train_config preset must be one of .* got \['modern'\]"),
    (lambda a, m: m.update(optimizer={"name": "muon"}), "optimizer must be one of .* got {'name': 'muon'}"),
    (lambda a, m: m["model_config"].update(norm="batchnorm"), "model_config is not usable: .*norm"),
    (lambda a, m: m["model_config"].update(mlp="relu"), "model_config is not usable: .*mlp"),
    (lambda a, m: m["model_config"].update(qk_norm="yes"), "model_config is not usable: .*qk_norm"),
], ids=["optimizer", "muon-state-without-muon", "muon-size", "muon-dtype", "muon-t", "preset", "preset-list",
        "optimizer-dict", "norm", "mlp", "qk_norm"])
def test_load_run_refuses_unknown_choices_and_bad_muon_state(muon_checkpoint, change, match):
    from numgpt.checkpoint import load_for_inference

    _rewrite(muon_checkpoint, change)
    with pytest.raises(CheckpointError, match=match):
        load_run(muon_checkpoint)
    with pytest.raises(CheckpointError, match=match):
        load_for_inference(muon_checkpoint.parent)


# --- max_time ---------------------------------------------------------------------------------------

def test_max_time_stops_the_run_and_ends_with_an_evaluation_and_a_checkpoint(textfile, tmp_path):
    out = tmp_path / "run"
    lines = []
    result = train(tiny(textfile, out, max_iters=10**6, lr_decay_iters=10**6, eval_interval=10**5,
                        log_interval=10**5, max_time=0.5), log=lines.append)
    assert 0 < result.iter_num < 10**6
    assert lines[-1].startswith(f"eval {result.iter_num:>6} |") and "saved" in lines[-1]
    meta = load_checkpoint(out / CHECKPOINT_NAME)[1]
    assert meta["iter_num"] == result.iter_num
    # stopped at the first step boundary past the budget
    assert 0.5 <= meta["train_seconds"] < 0.5 + 2.0
    assert any("or 0.5 s of training steps, whichever ends first" in line for line in lines)


def test_max_time_resumes_with_the_time_spent(textfile, tmp_path):
    out = tmp_path / "run"
    first = train(tiny(textfile, out, max_iters=10**6, lr_decay_iters=10**6, eval_interval=10**5,
                       max_time=0.3), log=quiet)
    spent = load_checkpoint(out / CHECKPOINT_NAME)[1]["train_seconds"]
    second = train(TrainConfig.resumed(str(out), log=quiet, max_time=spent + 0.3), log=quiet)
    assert second.iter_num > first.iter_num
    assert load_checkpoint(out / CHECKPOINT_NAME)[1]["train_seconds"] >= spent + 0.3
    # a budget already spent: nothing more to train, one evaluation
    third = train(TrainConfig.resumed(str(out), log=quiet, max_time=0.1), log=quiet)
    assert third.iter_num == second.iter_num and third.losses == []


def test_max_time_runs_the_schedule_on_the_time_budget():
    cfg = TrainConfig(max_time=10.0, warmup_iters=100, lr_decay_iters=1000, learning_rate=1e-3, min_lr=1e-4)

    def lr_at(seconds, iteration=123):
        return _Run.learning_rate(types.SimpleNamespace(cfg=cfg, train_seconds=seconds, iter_num=iteration))
    assert lr_at(0.0) == cosine_lr(0, 1e-3, 1e-4, 100, 1000)
    assert lr_at(0.5) == pytest.approx(1e-3 * 51 / 101)            # warmup: 1/10 of the budget
    assert lr_at(1.0) == pytest.approx(1e-3)                         # the peak, at the end of warmup
    assert lr_at(5.5) == pytest.approx(5.5e-4)                       # half-way down the cosine
    assert lr_at(10.0) == 1e-4 and lr_at(12.0) == 1e-4              # spent: min_lr
    # without max_time the iteration decides
    cfg = TrainConfig(warmup_iters=100, lr_decay_iters=1000, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(5.0, iteration=550) == cosine_lr(550, 1e-3, 1e-4, 100, 1000)
