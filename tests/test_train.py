"""Tests for the trainer: outputs of a run, chunking, exact resume, overrides, evaluation.

One tiny shapes dataset (40 images: 180 train / 10 test pairs) and a tiny paper VAE keep the
file fast; the compiled steps are shared by every run in the process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import chex
import jax
import ml_collections
import numpy as np
import optax
import pytest

from t2i_jax import checkpoint, configs, train
from t2i_jax.data import pipeline
from t2i_jax.errors import UserError

import tiny_runs

TINY = tiny_runs.TINY_VAE
TOTAL = 30  # optimiser steps of the reference run: 22 steps per epoch, so 1.4 epochs
STOP = 15  # where the interrupted run stops: mid-chunk, mid-epoch, off the log grid


def _config(data_dir, **changes) -> ml_collections.ConfigDict:
  return tiny_runs.tiny_config(data_dir, **{
      "model_kwargs": TINY, "num_epochs": 2, "max_steps": TOTAL, "checkpoint_every_steps": 10,
      "log_every_steps": 5, "keep_checkpoints": 3, **changes})


def _equal_trees(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(
      lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


def _records(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A reference run of TOTAL steps, and one stopped at STOP and resumed to TOTAL."""
  base = tmp_path_factory.getbasetemp()
  with pytest.MonkeyPatch.context() as mp:  # what conftest sets, for a module-scoped fixture
    mp.setenv("T2I_CACHE_DIR", str(base / "cache"))
    mp.setenv("T2I_DATA_DIR", str(base / "tfds"))
    data_dir = base / "train_tfds"
    config = _config(data_dir)
    full_dir, resumed_dir = base / "full", base / "resumed"
    full = train.train_and_evaluate(config, full_dir)
    train.train_and_evaluate(_config(data_dir, max_steps=STOP), resumed_dir)
    resumed = train.train_and_evaluate(config, resumed_dir)
    yield {"config": config, "full": full, "full_dir": full_dir, "resumed": resumed,
           "resumed_dir": resumed_dir, "data_dir": data_dir}


# --------------------------------------------------------------------------- full loop


def test_run_writes_metrics_config_run_info_tensorboard_and_checkpoints(runs):
  w = runs["full_dir"]
  assert int(runs["full"].step) == TOTAL
  assert json.loads((w / "config.json").read_text()) == configs.to_json_dict(runs["config"])
  run = json.loads((w / "run.json").read_text())
  assert run["param_count"] == sum(x.size for x in jax.tree.leaves(runs["full"].params))
  assert run["backend"] == jax.default_backend() and run["steps_per_epoch"] == 22
  assert run["sessions"][0]["start_step"] == 0 and "jax" in run["versions"]
  assert list((w / "tensorboard").glob("events.out.tfevents.*"))

  recs = _records(w)
  train_steps = [r["step"] for r in recs if r["split"] == "train" and r["scope"] == "steps"]
  assert train_steps == [5, 10, 15, 20, 25, 30]
  epoch = [r for r in recs if r["scope"] == "epoch"]
  assert [(r["split"], r["step"], r["epoch"]) for r in epoch] == [("train", 22, 1),
                                                                 ("test", 22, 1)]
  test = epoch[1]
  for key in ("loss", "mse", "kl", "paper_accuracy", "psnr", "nelbo_nats", "bits_per_dim"):
    assert np.isfinite(test[key]), key
  assert test["num_examples"] == 10 and epoch[0]["epoch_time_s"] > 0
  assert {(r["split"], r["scope"]) for r in recs if r["step"] == TOTAL} >= {
      ("train", "final"), ("test", "final")}

  # Saves at 10, 20, the epoch end (22) and the end (30); the last three are kept.
  assert checkpoint.latest_step(w) == TOTAL
  assert sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit()) == [
      20, 22, 30]


def test_checkpoint_every_epochs_skips_epoch_ends_but_never_the_last(runs, tmp_path):
  """checkpoint_every_epochs=2 over 3 epochs of 22 steps: saves at 44 and the end (66)."""
  config = _config(runs["data_dir"], num_epochs=3, max_steps=0, checkpoint_every_steps=0,
                   checkpoint_every_epochs=2, keep_checkpoints=5)
  state = train.train_and_evaluate(config, tmp_path / "run")
  assert int(state.step) == 66
  assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                if p.name.isdigit()) == [44, 66]
  with pytest.raises(UserError, match="checkpoint_every_epochs must be at least 1"):
    train.train_and_evaluate(_config(runs["data_dir"], checkpoint_every_epochs=0),
                             tmp_path / "bad")


def test_restore_for_inference_needs_no_optimizer(runs, tmp_path):
  config, params, step = checkpoint.restore_for_inference(runs["full_dir"])
  assert step == TOTAL and config.model == "model1"
  assert tuple(config.model_kwargs.decoder_dims) == TINY["decoder_dims"]
  assert _equal_trees(params, runs["full"].params)
  with pytest.raises(UserError, match="no checkpoint in .*train first"):
    checkpoint.restore_for_inference(tmp_path)
  assert checkpoint.latest_step(tmp_path) is None


# ----------------------------------------------------------------------------- resume


def test_resumed_run_is_bitwise_identical_to_an_uninterrupted_one(runs):
  assert int(runs["resumed"].step) == TOTAL
  assert _equal_trees(runs["resumed"].params, runs["full"].params)
  assert _equal_trees(runs["resumed"].opt_state, runs["full"].opt_state)
  # Same data order and randomness: the logged losses match too (all but the stop's extra
  # 'final' records at STOP).
  full = [r for r in _records(runs["full_dir"]) if r["step"] != STOP or r["scope"] != "final"]
  resumed = [r for r in _records(runs["resumed_dir"])
             if r["step"] != STOP or r["scope"] != "final"]
  assert [(r["step"], r["split"], r["scope"]) for r in full] == [
      (r["step"], r["split"], r["scope"]) for r in resumed]
  for a, b in zip(full, resumed):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
  sessions = json.loads((runs["resumed_dir"] / "run.json").read_text())["sessions"]
  assert [s["start_step"] for s in sessions] == [0, STOP]


def test_finished_run_is_a_no_op(runs, capsys):
  w = runs["full_dir"]
  before = (w / "metrics.jsonl").read_text()
  steps = sorted(p.name for p in (w / "checkpoints").iterdir())
  state = train.train_and_evaluate(runs["config"], w)
  assert "already holds a finished run" in capsys.readouterr().out
  assert int(state.step) == TOTAL and _equal_trees(state.params, runs["full"].params)
  assert (w / "metrics.jsonl").read_text() == before
  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == steps


def test_resume_with_another_model_config_is_refused(runs):
  changed = _config(runs["data_dir"], model_kwargs={**TINY, "latent_dim": 5})
  with pytest.raises(UserError, match="another config.*model_kwargs"):
    train.train_and_evaluate(changed, runs["full_dir"])


# ------------------------------------------------------------------- steps and chunks


@pytest.fixture(scope="module")
def state_and_batches():
  # The runs' model and shapes, so the K=8 program compiled for them is reused here.
  config = _config("unused")
  rng = np.random.default_rng(0)
  batches = {"image": rng.integers(0, 256, (8, 8, 64, 64, 3), dtype=np.uint8),
             "text": rng.normal(size=(8, 8, 50)).astype(np.float32)}
  state = train.create_train_state(config, jax.random.key(1),
                                   jax.tree.map(lambda x: x[0], batches))
  return state, batches, jax.random.key(2)


def test_chunking_does_not_change_the_result(state_and_batches):
  state, batches, rng = state_and_batches
  one = state
  losses_one = []
  for i in range(8):
    one, m = train.train_chunk(one, jax.tree.map(lambda x: x[i:i + 1], batches), rng)
    losses_one.append(float(m["loss"]))
  eight, m8 = train.train_chunk(state, batches, rng)
  assert int(eight.step) == int(one.step) == 8 and int(m8["nonfinite_step"]) == -1
  chex.assert_trees_all_close(eight.params, one.params, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(float(m8["loss"]), np.mean(losses_one), rtol=1e-6)
  # A chunk cut short (padding skipped) continues exactly: the same program runs every step.
  split, m5 = train.train_chunk(state, batches, rng, 5)
  rest = jax.tree.map(lambda x: np.concatenate([x[5:], np.zeros_like(x[:5])]), batches)
  split, _ = train.train_chunk(split, rest, rng, 3)
  assert int(split.step) == 8 and _equal_trees(split.params, eight.params)
  np.testing.assert_allclose(float(m5["loss"]), np.mean(losses_one[:5]), rtol=1e-6)


def test_a_batch_in_parts_takes_the_step_of_the_whole_batch(state_and_batches):
  """A batch given as parts (split_caption_len: rows at two caption lengths) weights each
  part's loss and metrics by its rows: with plain SGD the update is the whole batch's."""
  state, batches, rng = state_and_batches
  sgd = optax.sgd(1.0)  # the update is the gradient itself
  state = state.replace(tx=sgd, opt_state=sgd.init(state.params))
  batch = jax.tree.map(lambda x: x[0], batches)
  parts = (jax.tree.map(lambda x: x[:3], batch), jax.tree.map(lambda x: x[3:], batch))
  whole, m_whole = jax.jit(train.train_step)(state, batch, rng)
  split, m_split = jax.jit(train.train_step)(state, parts, rng)
  chex.assert_trees_all_close(split.params, whole.params, rtol=1e-5, atol=1e-5)
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(state.params)))
  assert moved > 1e-3  # the comparison is not between two unchanged states
  for key in ("loss", "mse", "kl"):
    np.testing.assert_allclose(float(m_split[key]), float(m_whole[key]), rtol=1e-4)


def test_nonfinite_loss_names_the_step(state_and_batches, tmp_path):
  state, batches, rng = state_and_batches
  bad = dict(batches, text=batches["text"].copy())
  bad["text"][3] = np.nan
  _, m = train.train_chunk(state, bad, rng)
  assert int(m["nonfinite_step"]) == 4  # the 4th optimiser step
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(train.NonFiniteLossError, match="non-finite at step 4"):
      train.on_nonfinite(4, 1, ckpt)


class TrainStepTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_train_step_matches_the_scanned_step(self):
    # Shapes of `state_and_batches` (chex test cases take no fixtures), so the scanned K=1
    # step compiled there is reused.
    config = _config("unused")
    rng = np.random.default_rng(3)
    batch = {"image": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
             "text": rng.normal(size=(8, 50)).astype(np.float32)}
    state = train.create_train_state(config, jax.random.key(1), batch)
    key = jax.random.key(4)
    new, metrics = self.variant(train.train_step)(state, batch, key)
    assert int(new.step) == 1
    assert set(metrics) >= {"loss", "mse", "kl", "paper_accuracy"}
    chex.assert_tree_all_finite(metrics)
    scanned, _ = train.train_chunk(state, jax.tree.map(lambda x: x[None], batch), key)
    chex.assert_trees_all_close(new.params, scanned.params, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- evaluation


def test_evaluation_counts_every_test_example_exactly_once(runs):
  config = runs["config"]
  table = pipeline.load_table(config, "test")
  assert len(table) == 10
  seen = []

  def recording_step(params, batch, rng):
    del params, rng
    keep = batch[train.EXAMPLE_MASK] > 0
    seen.append(batch["text"][keep])
    return {"mse": float(np.mean(batch["text"][keep]))}  # a mean over the real examples

  out = train.evaluate(recording_step, None, table, batch_size=4, rng=jax.random.key(0),
                       progress=False)
  assert out["num_examples"] == 10
  rows = np.concatenate(seen)
  np.testing.assert_array_equal(rows[np.lexsort(rows.T)], table.text[np.lexsort(table.text.T)])
  np.testing.assert_allclose(out["mse"], table.text.mean(), rtol=1e-5)

  # The real eval step with a padded last batch equals one unpadded pass over all 10.
  deterministic = _config(runs["data_dir"], sample_latent_eval=False)
  step = train.make_eval_step(deterministic)
  params = runs["full"].params
  padded = train.evaluate(step, params, table, batch_size=4, rng=jax.random.key(0),
                          progress=False)
  whole = train.evaluate(step, params, table, batch_size=64, rng=jax.random.key(0),
                         progress=False)
  for k in ("loss", "mse", "kl", "paper_accuracy", "psnr", "nelbo_nats", "bits_per_dim"):
    np.testing.assert_allclose(padded[k], whole[k], rtol=1e-5, err_msg=k)


# -------------------------------------------------------------------------- overrides


def test_overrides_parse_by_field_type():
  c = configs.apply_overrides(configs.base_config(), [
      "--config.batch_size=16", "--config.learning_rate", "1e-2", "--config.model=model3",
      "--config.remove_stopwords=false", "--config.sample_latent_eval=1",
      "--config.max_steps=1e3", "--config.model_kwargs.decoder_dims=32,64",
      "--config.model_kwargs.latent_dim=7"])
  assert (c.batch_size, c.learning_rate, c.model, c.max_steps) == (16, 1e-2, "model3", 1000)
  assert c.remove_stopwords is False and c.sample_latent_eval is True
  assert c.model_kwargs.to_dict() == {"decoder_dims": (32, 64), "latent_dim": 7}
  nested = ml_collections.ConfigDict({"a": {"b": 1.5, "t": (1, 2)}})
  nested = configs.apply_overrides(nested, ["--config.a.b=3", "--config.a.t=(4, 5, 6)"])
  assert nested.a.b == 3.0 and isinstance(nested.a.b, float) and nested.a.t == (4, 5, 6)
  assert configs.base_config().batch_size == 64  # the input is not modified


@pytest.mark.parametrize("arg, match", [
    ("--config.batch_sise=4", r"Unknown config key 'batch_sise'.*Did you mean batch_size"),
    ("--config.model_kwarg.x=1", r"Unknown config key 'model_kwarg'.*model_kwargs"),
    ("--config.batch_size=four", r"--config.batch_size: expected int, got 'four'"),
    ("--config.remove_stopwords=maybe", r"remove_stopwords: expected bool"),
    ("--config.learning_rate=fast", r"learning_rate: expected float"),
    ("--config.batch_size", r"needs a value"),
    ("--batch_size=4", r"Unexpected argument"),
])
def test_bad_overrides_are_one_line_user_errors(arg, match):
  with pytest.raises(UserError, match=match) as e:
    configs.apply_overrides(configs.base_config(), [arg])
  assert "\n" not in str(e.value)


def test_a_stage_level_override_of_a_shared_key_is_refused_not_ignored():
  from experiments import flow_shapes  # pylint: disable=import-outside-toplevel
  c = flow_shapes.get_config()
  with pytest.raises(UserError, match=r"--config.stage2.seed: seed is shared by every "
                     r"stage.*set --config.seed=1 instead") as e:
    configs.apply_overrides(c, ["--config.stage2.seed=1"])
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="--config.stage1.num_images"):
    configs.apply_overrides(c, ["--config.stage1.num_images=50"])
  ok = configs.apply_overrides(c, ["--config.seed=1", "--config.stage2.batch_size=32"])
  assert (ok.seed, ok.stage2.batch_size) == (1, 32)
  assert configs.shared_stage_keys(configs.base_config()) == []


def test_experiment_configs_and_main(tmp_path, capsys):
  for name, lr in (("model1", 1e-2), ("model2", 1e-3), ("model3", 1e-3)):
    c = configs.load_config_module(f"experiments.{name}")
    assert (c.dataset, c.model, c.learning_rate, c.batch_size, c.num_epochs) == (
        "flickr8k", name, lr, 1, 15)
    assert c.caption_mode == "sum" and c.remove_stopwords and c.sample_latent_eval
  path = tmp_path / "my_exp.py"
  path.write_text("from t2i_jax import configs\n"
                  "def get_config():\n  c = configs.base_config()\n  c.seed = 7\n  return c\n")
  assert configs.load_config_module(str(path)).seed == 7
  with pytest.raises(UserError, match="Cannot import config module"):
    configs.load_config_module("experiments.nope")

  from experiments import model1  # pylint: disable=import-outside-toplevel
  assert model1.main(["--workdir", str(tmp_path / "w"), "--config.bogus=1"]) == 2
  assert model1.main(["--config.seed=1"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].startswith("error: Unknown config key 'bogus'")
  assert err[1].startswith("error: --workdir is required")
  doc = model1.get_config.__doc__
  assert "python -m experiments.model1" in doc
  assert "Expected result" in doc and "Run time" in doc and "TBD" not in doc
  assert sys.modules["experiments.model1"] is model1


def test_overrides_take_nested_and_mixed_sequences():
  from experiments import bench_train  # pylint: disable=import-outside-toplevel
  c = configs.apply_overrides(bench_train.get_config(),
                              ['--config.rows=(("model1", 64, 16), ("cvae", 8, 1))'])
  assert c.rows == (("model1", 64, 16), ("cvae", 8, 1))
  with pytest.raises(UserError, match="--config.rows: expected tuple of tuple"):
    configs.apply_overrides(bench_train.get_config(), ['--config.rows=(("model1", "x", 16),)'])
  with pytest.raises(UserError, match="--config.rows"):
    configs.apply_overrides(bench_train.get_config(), ['--config.rows=(("model1", 64),)'])


def _table_of(num_images: int, captions_per_image: int = 5) -> pipeline.Table:
  n = num_images * captions_per_image
  return pipeline.Table(
      images=np.zeros((num_images, 64, 64, 3), np.uint8),
      image_index=np.repeat(np.arange(num_images, dtype=np.int32), captions_per_image),
      text=np.zeros((n, 24, 50), np.float32), mask=np.ones((n, 24), bool),
      caption_index=np.zeros(n, np.int32), image_ids=np.array([""] * num_images),
      captions=np.array([""] * n), clean_captions=np.array([""] * n), extras={})


def test_auto_device_data_budget_on_the_cpu():
  """'auto' keeps the train table on the CPU device when it fits device_data_fraction of the
  host's memory (or device_data_budget_mb where set), and says why when it does not."""
  from t2i_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  c = configs.base_config()
  assert c.data_on_device == "auto" and c.device_data_budget_mb == 0
  host = step_lib.host_memory_bytes()
  assert host is not None and host > 2**28  # a real machine reports its memory
  budget, source = step_lib.device_data_budget(c)
  assert budget == pytest.approx(c.device_data_fraction * host / jax.local_device_count())
  assert "host's memory" in source
  table = _table_of(2000)  # 73 MB: images once, 10,000 captions of 24 GloVe words
  mb = sum(v.nbytes for v in pipeline.pair_columns(table).values()) / 2**20
  c.device_data_budget_mb = int(mb) + 1
  assert step_lib.device_data_decision(c, table)[0]
  c.device_data_budget_mb = int(mb)
  on_device, why = step_lib.device_data_decision(c, table)
  assert not on_device
  assert "over the on-device budget" in why and "--config.data_on_device=always" in why
  c.data_on_device = "always"
  assert step_lib.use_device_data(c, table)
  c.data_on_device, c.device_data_budget_mb = "never", 0
  assert not step_lib.use_device_data(c, table)


def test_auto_device_data_is_one_decision_for_all_processes(monkeypatch):
  """Hosts with different memory: a table that fits this process's budget but not another
  process's stays on the host everywhere (different step paths would hang the run)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from t2i_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  table = _table_of(2000)
  mb = sum(v.nbytes for v in pipeline.pair_columns(table).values()) / 2**20
  c = configs.base_config()
  c.device_data_budget_mb = int(mb) + 1  # fits here
  gathered = []
  def allgather(x, others):
    gathered.append(np.asarray(x))
    return np.stack([np.asarray(x)] + [np.int32([o]) for o in others])
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: allgather(x, others=(True, False)))
  on_device, why = step_lib.device_data_decision(c, table)
  assert not on_device and gathered[-1].tolist() == [1]
  assert "not that of process(es) 2" in why and "--config.data_on_device=always" in why
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: allgather(x, others=(True, True)))
  assert step_lib.device_data_decision(c, table)[0]
  # Over this process's own budget: it still joins the gather (the others wait on it).
  c.device_data_budget_mb = int(mb)
  calls = len(gathered)
  assert not step_lib.device_data_decision(c, table)[0]
  assert len(gathered) == calls + 1 and gathered[-1].tolist() == [0]
