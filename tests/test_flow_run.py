"""The two-stage flow family through the trainer: both stages, resume at either stage,
sampling options from the command line.

Tiny sizes (40 shapes images, width-32 DiT, a few steps): what is checked is the program,
not the quality.
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import pytest

from t2i_jax import checkpoint, cli, configs, train

# Two stages compile a conv VAE and a transformer (~1 min on an idle 2-core VM, several
# under load): the whole module runs in CI's slow pass (`pytest -m slow`).
pytestmark = pytest.mark.slow

STEPS = 4


def _config(data_dir, dataset="shapes", manual_dir=None, **stage_changes):
  c = configs.flow_config(dataset)
  c.num_images = 40
  c.data_dir = str(data_dir)
  if manual_dir is not None:
    c.manual_dir = str(manual_dir)
  for stage in (c.stage1, c.stage2):
    stage.update(max_steps=STEPS, num_epochs=10, batch_size=8, eval_batch_size=8,
                 log_every_steps=2, checkpoint_every_steps=2, warmup_steps=2)
  c.stage1.model_kwargs.ae.channels = (16,)
  c.stage2.model_kwargs.ae.channels = (16,)
  c.stage2.model_kwargs.update(width=32, depth=1, num_heads=2, text_heads=2, text_layers=1)
  c.stage2.sample_steps = 3
  # experiments.flow_shapes' optimisers, so resume is checked bitwise under them: Muon in
  # both stages, stage 2's Newton-Schulz batched per matrix shape.
  for stage in (c.stage1, c.stage2):
    stage.optimizer = "muon"
    stage.optimizer_kwargs = ml_collections.ConfigDict({"b2": 0.99})
  c.stage2.optimizer_kwargs.update(matrix_lr_scale=3.0, batched_newton_schulz=True)
  for key, value in stage_changes.items():
    stage, name = key.split("__")
    c[stage][name] = value
  return c


def _leaves(workdir):
  _, params, step = checkpoint.restore_for_inference(workdir)
  return step, [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
  base = tmp_path_factory.mktemp("flow")
  train.train_stages(_config(base / "tfds"), base / "full")
  return base


def test_both_stages_train_and_the_second_reads_the_first(flow_run):
  run = flow_run / "full"
  assert json.loads((run / "stages.json").read_text())["final"] == "stage2"
  for stage in ("stage1", "stage2"):
    step, leaves = _leaves(run / stage)
    assert step == STEPS and all(np.isfinite(x).all() for x in leaves)
  metrics = (run / "stage2" / "metrics.jsonl").read_text().splitlines()
  test = [r for r in map(json.loads, metrics) if r["split"] == "test"][-1]
  assert np.isfinite(test["v_mse"]) and test["num_examples"] == 10
  # the in-loop eval also logs what the caption tells the model
  assert np.isclose(test["caption_gain"], test["v_mse_null"] - test["v_mse"], atol=1e-6)
  # The frozen first stage is stored once with the second, and equals the first's params.
  frozen = checkpoint.load_frozen(run / "stage2")
  _, first, _ = checkpoint.restore_for_inference(run / "stage1")
  for a, b in zip(jax.tree.leaves(frozen["params"]), jax.tree.leaves(first)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(frozen["latent_scale"]) > 0
  assert (run / "stage2" / "samples" / f"eval_{STEPS}.png").is_file()
  # Stage 2 trained on the stage-1 latents encoded once per training image (on the device).
  info = json.loads((run / "stage2" / "run.json").read_text())
  assert info["data_on_device"] and info["image_features"][1:] == [16, 16, 4]
  assert json.loads((run / "stage1" / "run.json").read_text())["image_features"] is None


def test_resume_at_either_stage_is_bitwise_the_uninterrupted_run(flow_run):
  data, cut = flow_run / "tfds", flow_run / "cut"
  # Stopped inside stage 1 (only stage 1 run, to step 2), then inside stage 2 (step 2).
  first_only = _config(data, stage1__max_steps=2)
  first_only.stages = ("stage1",)
  train.train_stages(first_only, cut)
  train.train_stages(_config(data, stage2__max_steps=2), cut)
  assert _leaves(cut / "stage2")[0] == 2
  train.train_stages(_config(data), cut)
  for stage in ("stage1", "stage2"):
    step_a, a = _leaves(flow_run / "full" / stage)
    step_b, b = _leaves(cut / stage)
    assert step_a == step_b == STEPS
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)


def test_sampling_options_from_the_command_line(flow_run, tmp_path, capsys):
  run = str(flow_run / "full")  # the two-stage folder: sampling reads its final stage
  npz = tmp_path / "s.npz"
  assert cli.main(["sample", "--workdir", run, "a red circle above a blue square",
                   "a blue square", "-n", "3", "--guidance", "2", "--steps", "2",
                   "--solver", "heun", "--guidance-interval", "0.5,1", "--time-shift", "2",
                   "--out", str(tmp_path / "g.png"), "--npz", str(npz)]) == 0
  with np.load(npz, allow_pickle=False) as data:
    assert data["images"].shape == (2, 3, 64, 64, 3) and data["images"].dtype == np.uint8
    assert list(data["captions"]) == ["a red circle above a blue square", "a blue square"]
    assert float(data["option_guidance"]) == 2.0 and int(data["option_steps"]) == 2
    assert data["option_guidance_interval"].tolist() == [0.5, 1.0]
    assert float(data["option_time_shift"]) == 2.0
  capsys.readouterr()
  for bad, words in ((["--steps", "0"], "--steps must be at least 1"),
                     (["--guidance", "-1"], "--guidance must be a finite number >= 0"),
                     (["--solver", "rk9"], "solver"),
                     (["--guidance-interval", "0.9,0.1"], "--guidance-interval must be"),
                     (["--time-shift", "0"], "--time-shift must be a finite number > 0"),
                     (["--temperature", "0.5"], "has no sampling temperature")):
    assert cli.main(["sample", "--workdir", run, "a red circle", *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err


def test_sampling_benchmark_times_each_setting(flow_run, capsys):
  from experiments import bench_sample  # pylint: disable=import-outside-toplevel
  run = str(flow_run / "full")
  assert bench_sample.main([f"--config.workdir={run}", "--config.guidance=(1.0, 3.0)",
                            "--config.steps=(2,)", "--config.num_images=4",
                            "--config.rounds=1"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  options = [row["options"] for row in result["rows"]]
  # the run's own setting (guidance 3, its 3 steps) first, then guidance 1, then 2 steps;
  # guidance 3 is the run's own setting again, so it is timed once
  assert [(o["guidance"], o["steps"]) for o in options] == [(3.0, 3), (1.0, 3), (3.0, 2)]
  assert all(row["images"] == 4 and row["images_per_s"] > 0 for row in result["rows"])
  assert result["step"] == STEPS and result["machine"]
  assert bench_sample.main(["--config.workdir=" + run, "--config.steps=(0,)"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:") and "steps" in err[0], err


def test_loss_command_recomputes_the_last_in_loop_eval(flow_run, capsys):
  run = flow_run / "full"
  metrics = (run / "stage2" / "metrics.jsonl").read_text().splitlines()
  last = [r for r in map(json.loads, metrics) if r["split"] == "test"][-1]
  assert cli.main(["loss", "--workdir", str(run)]) == 0  # the final stage's latest params
  out = capsys.readouterr().out
  report = json.loads((run / "stage2" / "eval" / "loss_test.json").read_text())
  assert report["step"] == last["step"] == STEPS and "caption_gain" in out
  for name in ("v_mse", "v_mse_null", "caption_gain"):
    assert np.isclose(report["metrics"][name], last[name], rtol=1e-5, atol=1e-7), name
  # Another noise draw (batch size) gives other numbers; a first stage has its own metrics.
  assert cli.main(["loss", "--workdir", str(run), "--batch-size", "3",
                   "--out", str(flow_run / "b3.json")]) == 0
  other = json.loads((flow_run / "b3.json").read_text())["metrics"]
  assert other["num_examples"] == 10 and other["v_mse"] != report["metrics"]["v_mse"]
  assert cli.main(["loss", "--workdir", str(run / "stage1"), "--split", "train"]) == 0
  assert "psnr" in json.loads((run / "stage1" / "eval" / "loss_train.json").read_text())[
      "metrics"]
  capsys.readouterr()
  assert cli.main(["loss", "--workdir", str(run), "--split", "validation"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "validation" in err[0], err


def test_step_picks_a_kept_checkpoint_and_a_copied_run_gets_its_stages_named(
    flow_run, tmp_path, capsys):
  import shutil  # pylint: disable=import-outside-toplevel
  run = flow_run / "full"
  assert cli.main(["loss", "--workdir", str(run), "--step", "2"]) == 0
  early = json.loads((run / "stage2" / "eval" / "loss_test_step2.json").read_text())
  latest = json.loads((run / "stage2" / "eval" / "loss_test.json").read_text())
  assert early["step"] == 2 and latest["step"] == STEPS
  assert early["metrics"]["v_mse"] != latest["metrics"]["v_mse"]
  capsys.readouterr()
  assert cli.main(["sample", "--workdir", str(run), "a red circle", "--step", "3"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "No checkpoint at step 3" in err[0] and "2, 4" in err[0], err
  # A run copied without its stages.json: the line names its stages, not "train first".
  copy = tmp_path / "copy"
  shutil.copytree(run / "stage2", copy / "stage2")
  assert cli.main(["loss", "--workdir", str(copy)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "stages.json" in err[0] and str(copy / "stage2") in err[0], err


class PixelReader:
  """A stand-in scene reader that reads every cell off its pixels' mean: a deterministic
  function of the images, so equal verdicts on noisy tiny-run samples mean equal images."""

  meta = {"heldout_accuracy": {}, "heldout_images": 0}

  def predict(self, images):
    from t2i_jax.data import shapes  # pylint: disable=import-outside-toplevel
    x = np.asarray(images, np.float64)[:, :63, :63]
    cells = x.reshape(len(x), 3, 21, 3, 21, 3).mean(axis=(2, 4)).reshape(len(x), 9, 3)
    level = (cells.sum(-1) * 7).astype(np.int64)
    return {"present": (level % 2).astype(np.int32),
            "shape": (level % len(shapes.SHAPES)).astype(np.int32),
            "colour": np.argmax(cells, -1).astype(np.int32) % len(shapes.COLOURS),
            "size": (level % len(shapes.SIZES)).astype(np.int32),
            "background": np.argmax(x.mean(axis=(1, 2)), -1).astype(np.int32)}


def test_the_in_loop_judge_scores_as_evaluate_does_and_changes_no_bit(flow_run, monkeypatch):
  from t2i_jax import evaluate  # pylint: disable=import-outside-toplevel
  from t2i_jax.evals import scene_reader  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(scene_reader, "get_scene_reader", lambda **kw: PixelReader())
  judged = flow_run / "judged"
  train.train_stages(_config(flow_run / "tfds", stage2__judge_num=6), judged)
  records = [json.loads(line) for line in
             (judged / "stage2" / "metrics.jsonl").read_text().splitlines()]
  evals = sorted({r["step"] for r in records if r["split"] == "test"})
  for split in ("test", "compositional"):  # every in-loop eval judged both splits
    rows = [r for r in records if r["split"] == f"judge_{split}"]
    assert sorted(r["step"] for r in rows) == evals and evals
    assert all(0.0 <= r["all_stated_correct"] <= 1.0 for r in rows)
  # The judge only reads the params: the run ends on the bits of the run without it.
  for stage in ("stage1", "stage2"):
    for x, y in zip(_leaves(flow_run / "full" / stage)[1], _leaves(judged / stage)[1]):
      np.testing.assert_array_equal(x, y)
  # Its last verdicts are t2i evaluate's --num 6 --seeds 1 on the same params.
  report = evaluate.evaluate_run(judged, num=6, seeds=1, reader=PixelReader(), progress=False)
  scored = []
  for split in ("test", "compositional"):
    last = [r for r in records if r["split"] == f"judge_{split}"][-1]
    assert last["step"] == STEPS
    for e in report["results"]:
      if e["model"] == "flow" and e["split"] == split and e["name"] in last:
        assert last[e["name"]] == pytest.approx(e["mean"], abs=1e-12), (split, e["name"])
        scored.append(e["mean"])
  assert len(scored) >= 6 and any(0.0 < v < 1.0 for v in scored), scored


def test_the_in_loop_judge_reads_a_flickr8k_run_with_the_dual_encoder(tmp_path, monkeypatch):
  """The judge's other evaluator: Flickr8k runs are scored by the dual encoder (R-precision
  and the feature distances), with t2i evaluate's numbers at the last step."""
  import functools  # pylint: disable=import-outside-toplevel
  import flickr8k_fixtures as fx  # pylint: disable=import-outside-toplevel
  from t2i_jax import evaluate  # pylint: disable=import-outside-toplevel
  from t2i_jax.evals import dual_encoder  # pylint: disable=import-outside-toplevel
  tiny = dual_encoder.DualConfig(widths=(4, 8, 16), text_hidden=16, embed_dim=8,
                                 batch_size=8, min_steps=3, max_steps=3)
  # Trained once on the fixture's official train split and cached (conftest's temporary
  # T2I_CACHE_DIR); evaluate_run below loads the same one.
  monkeypatch.setattr(dual_encoder, "get_dual_encoder",
                      functools.partial(dual_encoder.get_dual_encoder, cfg=tiny))
  root = fx.make_official_unzipped(tmp_path / "corpus")
  run = tmp_path / "run"
  train.train_stages(_config(tmp_path / "tfds", "flickr8k", root, stage2__judge_num=2), run)
  records = [json.loads(line) for line in
             (run / "stage2" / "metrics.jsonl").read_text().splitlines()]
  evals = sorted({r["step"] for r in records if r["split"] == "test"})
  rows = [r for r in records if r["split"] == "judge_test"]
  assert evals and sorted(r["step"] for r in rows) == evals
  assert all(0.0 <= r["r_precision"] <= 1.0 for r in rows)
  assert not any(r["split"] == "judge_compositional" for r in records)  # shapes only
  report = evaluate.evaluate_run(run, num=2, seeds=1, progress=False)
  last, compared = rows[-1], []
  assert last["step"] == STEPS
  for e in report["results"]:
    if e["model"] == "flow" and e["split"] == "test" and e["name"] in last:
      assert last[e["name"]] == pytest.approx(e["mean"], rel=1e-6, abs=1e-9), e["name"]
      compared.append(e["name"])
  assert "r_precision" in compared and len(compared) >= 2, compared
