"""The training benchmark's quick mode runs end to end, so the module cannot rot."""

from __future__ import annotations

import json

import pytest

from experiments import bench_train
from t2i_jax import methods


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_quick_bench_reports_rows_here_and_on_forced_devices(capsys):
  assert bench_train.main(["--config.quick=True", "--config.forced_devices=2"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out[-2].startswith("machine: ")
  result = json.loads(out[-1])
  rows = result["rows"]
  assert [(r["model"], r["batch_size"], r["devices"]) for r in rows] == [
      ("model1", 2, 1), ("model1", 2, 2)]
  for r in rows:
    assert r["samples_per_s"] > 0 and r["ms_per_step"] > 0 and r["epoch_s"] > 0
    assert r["peak_rss_mb"] > 0


def test_cvae_rows_time_the_cvae_shapes_experiment():
  from experiments import cvae_shapes  # pylint: disable=import-outside-toplevel
  c = bench_train._model_config("cvae", 64, 1, "float32")  # pylint: disable=protected-access
  want = cvae_shapes.get_config()
  assert c.model_kwargs.to_dict() == want.model_kwargs.to_dict()
  # The loss is the family's (config.loss moved into t2i_jax.methods).
  assert (methods.method_class(c.model).__name__, c.gsnn_weight, c.batch_size,
          c.steps_per_scan) == ("CVAEMethod", want.gsnn_weight, 64, 1)
