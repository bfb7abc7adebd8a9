"""A model family defined here, outside the library, goes through every generic path.

It registers itself with ``methods.register`` (no library file names it), then trains,
evaluates in the loop, checkpoints, resumes bitwise, and is sampled and scored by
``t2i sample`` and ``t2i evaluate``: what a new family costs is this one small module.
"""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2i_jax import cli, methods, train
from t2i_jax.evals import scene_reader
from t2i_jax.methods.base import Method

import tiny_runs


class MLPDecoder(nn.Module):
  """Caption sum -> 64x64x3 image through one hidden layer."""

  hidden: int = 16

  @nn.compact
  def __call__(self, text):
    h = nn.relu(nn.Dense(self.hidden)(text))
    return nn.sigmoid(nn.Dense(64 * 64 * 3)(h)).reshape((-1, 64, 64, 3))


@dataclasses.dataclass(frozen=True)
class ToyMethod(Method):
  """A 2-layer MLP decoder from the caption sum, trained on MSE; noise-free sampling plus a
  'brightness' option, to show that options reach generate."""

  model: MLPDecoder


  @classmethod
  def from_config(cls, config):
    return cls(model=MLPDecoder(**config.model_kwargs))

  def default_options(self, config):
    return {"brightness": 0.0}

  def init(self, rng, batch, frozen=None):
    return self.model.init(rng, batch["text"])["params"]

  def loss(self, params, batch, rng, step, frozen=None):
    recon = self.model.apply({"params": params}, batch["text"])
    mse = jnp.mean(jnp.square(recon - batch["image"]))
    return mse, {"loss": mse, "mse": mse, "toy_metric": 2.0 * mse}

  def eval_metrics(self, params, batch, rng, frozen=None):
    recon = self.model.apply({"params": params}, batch["text"])
    err = jnp.mean(jnp.square(recon - batch["image"]).reshape(recon.shape[0], -1), axis=-1)
    return {"mse": err, "psnr": -10.0 * jnp.log10(err)}

  def generate(self, params, text, mask, keys, frozen=None, *, brightness=0.0):
    return jnp.clip(self.model.apply({"params": params}, text) + brightness, 0.0, 1.0)


methods.register("toy_mlp", ToyMethod)


def _config(data_dir, **changes):
  return tiny_runs.tiny_config(data_dir, model="toy_mlp", model_kwargs={"hidden": 16},
                               optimizer="adam", **changes)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("toy")
  data_dir = base / "tfds"
  full = train.train_and_evaluate(_config(data_dir, num_epochs=2), base / "full")
  # The same run cut after step 3 (a checkpoint), then resumed by the same call.
  cut = _config(data_dir, num_epochs=2, max_steps=3)
  train.train_and_evaluate(cut, base / "cut")
  resumed = train.train_and_evaluate(_config(data_dir, num_epochs=2), base / "cut")
  return {"base": base, "data_dir": data_dir, "full": full, "resumed": resumed}


def test_a_family_registered_outside_the_library_trains_and_logs_its_own_keys(toy_runs):
  records = [json.loads(line) for line in
             (toy_runs["base"] / "full" / "metrics.jsonl").read_text().splitlines()]
  train_epochs = [r for r in records if r["split"] == "train" and r["scope"] == "epoch"]
  tests = [r for r in records if r["split"] == "test"]
  assert len(train_epochs) == 2 and len(tests) == 2
  # Whatever keys the loss returns are logged; the in-loop eval averages eval_metrics.
  assert train_epochs[-1]["toy_metric"] == pytest.approx(2 * train_epochs[-1]["mse"], rel=1e-5)
  assert train_epochs[-1]["mse"] < train_epochs[0]["mse"]
  assert {"mse", "psnr", "num_examples"} <= set(tests[-1])
  assert tests[-1]["num_examples"] == 10
  assert (toy_runs["base"] / "full" / "samples" / f"eval_{tests[-1]['step']}.png").is_file()


def test_a_resumed_toy_run_is_bitwise_the_uninterrupted_one(toy_runs):
  full, resumed = toy_runs["full"], toy_runs["resumed"]
  assert int(full.step) == int(resumed.step) == 44  # 2 epochs of 22 steps
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(full.opt_state), jax.tree.leaves(resumed.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_t2i_sample_draws_the_toy_family_with_its_options(toy_runs, tmp_path, capsys):
  workdir = str(toy_runs["base"] / "full")
  npz = tmp_path / "toy.npz"
  assert cli.main(["sample", "--workdir", workdir, "a red circle", "a blue square", "-n", "2",
                   "--out", str(tmp_path / "g.png"), "--npz", str(npz)]) == 0
  with np.load(npz, allow_pickle=False) as data:
    assert data["images"].shape == (2, 2, 64, 64, 3) and data["images"].dtype == np.uint8
    assert list(data["captions"]) == ["a red circle", "a blue square"]
    dark = data["images"]
  # An option of another family is refused in one line; the toy's own is not.
  assert cli.main(["sample", "--workdir", workdir, "a red circle", "--guidance", "2"]) == 2
  assert "has no sampling guidance" in capsys.readouterr().err
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  gen = sample.load_generator(workdir)
  bright = sample.generate(gen, ["a red circle", "a blue square"], 2, brightness=1.0)
  assert (bright == 255).all() and not (dark == 255).all()


class _EmptyReader:
  """Reads every image as an empty scene: the evaluation's own code still runs end to end."""

  meta = {"heldout_accuracy": {k: 1.0 for k in scene_reader.ATTRIBUTES}, "heldout_images": 1}

  def predict(self, images):
    n = len(images)
    return {"present": np.zeros((n, 9), np.int32), "shape": np.full((n, 9), -1, np.int32),
            "colour": np.full((n, 9), -1, np.int32), "size": np.full((n, 9), -1, np.int32),
            "background": np.full((n,), -1, np.int32)}


def test_t2i_evaluate_scores_the_toy_family_beside_the_baselines(toy_runs, monkeypatch, capsys):
  monkeypatch.setattr(scene_reader, "get_scene_reader", lambda **kw: _EmptyReader())
  workdir = toy_runs["base"] / "full"
  assert cli.main(["evaluate", "--workdir", str(workdir), "--num", "4", "--seeds", "1"]) == 0
  report = json.loads((workdir / "eval" / "results.json").read_text())
  models = {r["model"] for r in report["results"]}
  assert {"toy_mlp", "mean_image", "retrieval", "real"} <= models
  assert report["options"] == {"brightness": 0.0}
