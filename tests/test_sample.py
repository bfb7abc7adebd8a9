"""Tests for sampling, comparison grids, curves and `t2i train`, on one tiny trained run.

The run is trained once per module through `t2i train` with a config file (40 shapes
images, the tiny VAE and batch shapes of test_train.py, so a full-suite run reuses its
compiled steps); every other test restores it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from t2i_jax import checkpoint, cli, sample
from t2i_jax.data import pipeline
from t2i_jax.errors import UserError
from t2i_jax.methods import paper_vae, vae

import tiny_runs

CAPTIONS = ["a red circle on a gray background", "a big blue square at the top left"]
STEPS = 44  # 2 epochs of 22 steps (180 train pairs, batch 8)



@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-epoch run trained by `t2i train CONFIG --workdir W --config...` overrides."""
  base = tmp_path_factory.mktemp("sample")
  with pytest.MonkeyPatch.context() as mp:  # what conftest sets, for a module-scoped fixture
    mp.setenv("T2I_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    mp.setenv("T2I_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))
    config_path = base / "tiny_shapes.py"
    config_path.write_text(tiny_runs.tiny_config_file(base / "tfds", num_epochs=15))
    workdir = base / "run"
    rc = cli.main(["train", str(config_path), "--workdir", str(workdir),
                   "--config.num_epochs=2", "--config.learning_rate", "0.003"])
    yield {"rc": rc, "workdir": workdir, "config_path": config_path}


@pytest.fixture(scope="module")
def gen(run):
  return sample.load_generator(run["workdir"])


def _error_line(capsys) -> str:
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def _tile(png: Image.Image, row: int, col: int, col_labels: bool = True) -> np.ndarray:
  g = sample.grid_layout(row + 1, col + 1, col_labels)
  x, y = g["left"] + col * g["step"], g["top"] + row * g["step"]
  return np.asarray(png.convert("RGB"))[y:y + sample.TILE, x:x + sample.TILE]


def _upscaled(image: np.ndarray) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((sample.TILE, sample.TILE),
                                                  Image.Resampling.NEAREST))


# ------------------------------------------------------------------------------ train


def test_train_command_applies_overrides(run, tmp_path, capsys):
  assert run["rc"] == 0
  saved = json.loads((run["workdir"] / "config.json").read_text())
  assert (saved["num_epochs"], saved["learning_rate"], saved["num_images"]) == (2, 0.003, 40)
  assert checkpoint.latest_step(run["workdir"]) == STEPS
  assert cli.main(["train", str(run["config_path"]), "--workdir", str(tmp_path / "w"),
                   "--config.bogus=1"]) == 2
  assert _error_line(capsys).startswith("error: Unknown config key 'bogus'")
  assert cli.main(["train", str(tmp_path / "missing.py"), "--workdir", str(tmp_path)]) == 2
  assert "does not exist" in _error_line(capsys)


def test_sampling_imports_no_training_code():
  code = ("import sys, t2i_jax.cli, t2i_jax.sample, t2i_jax.plots; "
          "print([m for m in ('t2i_jax.train', 'optax') if m in sys.modules])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == "[]"


# ----------------------------------------------------------------------------- sample


def test_sample_command_writes_the_grid_it_generates(run, gen, tmp_path, capsys):
  out = tmp_path / "grid.png"
  assert cli.main(["sample", "--workdir", str(run["workdir"]), *CAPTIONS, "-n", "3",
                   "--seed", "5", "--out", str(out)]) == 0
  assert capsys.readouterr().out.strip() == str(out)
  png = Image.open(out)
  g = sample.grid_layout(2, 3, col_labels=True)
  assert png.size == (g["width"], g["height"])
  images = sample.generate(gen, CAPTIONS, 3, seed=5)
  for r in range(2):
    for c in range(3):
      np.testing.assert_array_equal(_tile(png, r, c), _upscaled(images[r, c]))
  assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, then renamed

  # Default path and --mean (one column unless -n says otherwise).
  assert cli.main(["sample", "--workdir", str(run["workdir"]), "--mean", CAPTIONS[0]]) == 0
  default = run["workdir"] / "samples" / f"sample_{STEPS}.png"
  assert capsys.readouterr().out.strip() == str(default)
  g = sample.grid_layout(1, 1, col_labels=True)
  assert Image.open(default).size == (g["width"], g["height"])


def test_generation_is_a_function_of_the_seed(gen):
  a = sample.generate(gen, CAPTIONS, 4, seed=0)
  assert a.shape == (2, 4, 64, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(sample.generate(gen, CAPTIONS, 4, seed=0), a)
  assert not np.array_equal(sample.generate(gen, CAPTIONS, 4, seed=1), a)
  assert not np.array_equal(a[0, 0], a[0, 1])  # columns are distinct samples
  # Sample j of caption i depends on (seed, i, j) only: a smaller request is a sub-grid.
  np.testing.assert_array_equal(sample.generate(gen, CAPTIONS[:1], 2, seed=0), a[:1, :2])
  mean = sample.generate(gen, CAPTIONS, 3, seed=0, sample_latent=False)
  np.testing.assert_array_equal(mean[:, :1].repeat(3, axis=1), mean)
  np.testing.assert_array_equal(sample.generate(gen, CAPTIONS, 3, seed=9, sample_latent=False),
                                mean)


def test_requests_of_any_size_share_one_compiled_sampler(gen):
  """Every call draws DRAW_BATCH rows: a run's grids, samples and evaluation compile once."""
  fn = sample._generate_fn(gen.method)  # pylint: disable=protected-access
  two = sample.generate(gen, CAPTIONS, 1, seed=3)  # 2 rows, padded to one call
  compiled = fn._cache_size()  # pylint: disable=protected-access
  assert sample.DRAW_BATCH < 70
  many = sample.generate(gen, CAPTIONS * 5, 7, seed=3)  # 70 rows: two calls
  sample.generate(gen, CAPTIONS[:1], sample.DRAW_BATCH, seed=3)  # exactly one call
  assert fn._cache_size() == compiled  # pylint: disable=protected-access
  assert many.shape == (10, 7, 64, 64, 3)
  np.testing.assert_array_equal(many[:2, :1], two)  # the same keys, the same images


def test_captions_are_encoded_as_in_training(gen):
  table = pipeline.load_table(gen.config, "test")
  np.testing.assert_array_equal(sample.encode_captions(gen, list(table.captions[:3])),
                                table.text[:3])


@dataclasses.dataclass(frozen=True)
class _TemperatureMethod(paper_vae.PaperVAEMethod):
  """A stand-in family whose generate takes a temperature (it paints it)."""

  def default_options(self, config):
    return dict(super().default_options(config), temperature=float(config.sample_temperature))

  def check_options(self, options):
    options = super().check_options(options)
    options["temperature"] = vae.check_temperature(options["temperature"])
    return options

  def generate(self, params, text, mask, keys, frozen=None, *, temperature=1.0, **options):
    return super().generate(params, text, mask, keys, frozen, **options) * 0.0 + temperature


def test_temperature_reaches_models_that_accept_it(gen):
  with pytest.raises(UserError, match="has no sampling temperature"):
    sample.generate(gen, CAPTIONS, 1, temperature=0.5)
  fields = {f.name: getattr(gen.method, f.name) for f in dataclasses.fields(gen.method)}
  warm = dataclasses.replace(gen, method=_TemperatureMethod(**fields))
  assert np.all(sample.generate(warm, CAPTIONS, 2, temperature=0.5) == 128)
  # No temperature given: the run's config.sample_temperature (1 when a run has none).
  assert np.all(sample.generate(warm, CAPTIONS, 1) == 255)
  cold = dataclasses.replace(warm, config=ml_collections.ConfigDict(
      dict(warm.config.to_dict(), sample_temperature=0.0)))
  assert np.all(sample.generate(cold, CAPTIONS, 1) == 0)
  with pytest.raises(UserError, match="temperature must be a number >= 0"):
    sample.generate(warm, CAPTIONS, 1, temperature=-1.0)


def test_out_of_vocabulary_words_are_named_once_per_caption(run, tmp_path, capsys):
  assert cli.main(["sample", "--workdir", str(run["workdir"]), "a red circle zzqxv zzqxv",
                   "blue square", "-n", "1", "--out", str(tmp_path / "g.png")]) == 0
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1, err
  assert err[0].startswith("warning: caption 'a red circle zzqxv zzqxv': 2 of 4 words")
  assert err[0].endswith("ignored: zzqxv")


def test_a_100k_character_caption_works(run, gen, tmp_path):
  long = ("a red circle above a blue square " * 4000)[:100_000]
  assert cli.main(["sample", "--workdir", str(run["workdir"]), long, "-n", "2",
                   "--out", str(tmp_path / "long.png")]) == 0
  assert Image.open(tmp_path / "long.png").size[0] == sample.grid_layout(1, 2)["width"]


@pytest.mark.parametrize("caption, match", [
    ("", "has no words left after cleaning"),
    ("   \t ", "has no words left after cleaning"),
    ("the of and is 42 !!", "has no words left after cleaning"),
    ("一只狗在草地上跑", "'一只狗在草地上跑' has no words left"),
    ("zzqxv qqwwx", "none of its words are in the GloVe vocabulary"),
    ("x" * 100_000, "none of its words"),  # one huge token: fails fast, message cut short
])
def test_unusable_captions_are_one_line_errors(run, tmp_path, capsys, caption, match):
  assert cli.main(["sample", "--workdir", str(run["workdir"]), "a red zzqxv circle", caption,
                   "--out", str(tmp_path / "g.png")]) == 2  # no OOV warning before the error
  line = _error_line(capsys)
  assert match in line and len(line) < 300
  assert not (tmp_path / "g.png").exists()


def test_bad_workdirs_are_one_line_errors(tmp_path, capsys):
  for command in (["sample", "--workdir", str(tmp_path / "nope"), "a dog"],
                  ["compare", "--workdir", str(tmp_path / "nope")],
                  ["plot", "--workdir", str(tmp_path / "nope")]):
    assert cli.main(command) == 2
    assert "does not exist" in _error_line(capsys)
  (tmp_path / "checkpoints").mkdir()
  assert cli.main(["sample", "--workdir", str(tmp_path), "a dog"]) == 2
  assert f"no checkpoint in {tmp_path}" in _error_line(capsys)
  assert cli.main(["plot", "--workdir", str(tmp_path)]) == 2
  assert "no metrics.jsonl" in _error_line(capsys)


# ------------------------------------------------------------------- compare and plot


def test_compare_shows_test_images_beside_samples(run, gen, tmp_path, capsys):
  out = tmp_path / "compare.png"
  assert cli.main(["compare", "--workdir", str(run["workdir"]), "--num", "3", "--n", "2",
                   "--seed", "1", "--out", str(out)]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1] == str(out) and lines[0].startswith("the mean training image on all")
  png = Image.open(out)
  g = sample.grid_layout(3, 4, col_labels=True)  # dataset, 2 samples, the mean image
  assert png.size == (g["width"], g["height"])
  table = pipeline.load_table(gen.config, "test")
  train = pipeline.load_table(gen.config, "train")
  # The collapse reference, against a direct computation over the pairs.
  mean = train.images[train.image_index].astype(np.float64).mean(0) / 255.0
  test_imgs = table.images[table.image_index].astype(np.float64) / 255.0
  ref = sample.collapse_reference(train, table)
  np.testing.assert_allclose(ref["mse"], np.square(test_imgs - mean).mean(), rtol=1e-5)
  acc = (np.argmax(test_imgs, -1) == np.argmax(mean, -1)).mean()
  np.testing.assert_allclose(ref["paper_accuracy"], acc, rtol=1e-6)
  assert ref["test_pairs"] == len(table) and f"MSE {ref['mse']:.5f}" in lines[0]
  np.testing.assert_allclose(sample.mean_image(train), mean, atol=1e-6)
  np.testing.assert_array_equal(_tile(png, 0, 3), _upscaled(np.round(
      sample.mean_image(train) * 255.0).astype(np.uint8)))
  order = np.random.default_rng(1).permutation(len(table))[:3]
  samples = sample.generate_from_tensors(gen, table.text[order], 2, seed=1)
  for r, i in enumerate(order):
    np.testing.assert_array_equal(_tile(png, r, 0), _upscaled(table.images[table.image_index[i]]))
    np.testing.assert_array_equal(_tile(png, r, 2), _upscaled(samples[r, 1]))


def test_plot_draws_per_epoch_curves(run, tmp_path, capsys):
  out = tmp_path / "curves.png"
  assert cli.main(["plot", "--workdir", str(run["workdir"]), "--out", str(out)]) == 0
  assert capsys.readouterr().out.strip() == str(out)
  width, height = Image.open(out).size
  assert width > 2 * height  # three panels side by side: loss, accuracy, PSNR
  from t2i_jax import plots  # pylint: disable=import-outside-toplevel
  curves = plots.epoch_curves(plots.read_metrics(run["workdir"]))
  assert curves["train"]["loss"][0] == [1.0, 2.0]
  assert set(curves["test"]) == {"loss", "paper_accuracy", "psnr"}
  assert "psnr" not in curves["train"]


def test_plot_keeps_a_trailing_partial_epoch_only():
  from t2i_jax import plots  # pylint: disable=import-outside-toplevel
  rec = lambda step, epoch, scope: {"step": step, "epoch": epoch, "split": "train",
                                    "scope": scope, "loss": float(step)}
  records = [rec(5, 1, "final"), rec(10, 1, "epoch"), rec(15, 2, "final")]
  assert plots.epoch_curves(records, spe=10)["train"]["loss"] == ([1.0, 1.5], [10.0, 15.0])


def test_plot_draws_the_judges_splits_in_their_own_panel(tmp_path):
  """A run with the in-loop judge: its 'judge_<split>' records get the headline panel."""
  from t2i_jax import plots  # pylint: disable=import-outside-toplevel
  records = []
  for epoch in (1, 2):
    records.append({"step": 10 * epoch, "epoch": epoch, "split": "test", "scope": "epoch",
                    "v_mse": 1.0 / epoch, "caption_gain": 0.01 * epoch})
    for k, split in enumerate(("judge_test", "judge_compositional")):
      records.append({"step": 10 * epoch, "epoch": epoch, "split": split, "scope": "epoch",
                      "all_stated_correct": 0.2 * epoch + 0.1 * k})
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  curves = plots.epoch_curves(plots.read_metrics(tmp_path))
  xs, ys = curves["judge_compositional"]["all_stated_correct"]
  assert xs == [1.0, 2.0] and ys == pytest.approx([0.3, 0.5])
  assert set(curves["test"]) == {"v_mse", "caption_gain"}
  out = plots.plot_curves(tmp_path)
  width, height = Image.open(out).size
  assert width > 3 * height  # velocity MSE, caption gain, judge
