"""The peer benchmark's quick mode runs end to end, so the module cannot rot."""

from __future__ import annotations

import json

import pytest

from experiments import bench_peers


def test_quick_bench_peers_reports_every_peer_against_the_limits(capsys):
  assert bench_peers.main(["--config.quick=True"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out[-2].startswith("machine: ")
  result = json.loads(out[-1])
  peers = result["peers"]
  assert peers[:2] == ["t2i_jax", "keras"]
  assert ("torch" in peers) == bench_peers.torch_available()
  assert {r["peer"] for r in result["rows"]} == set(peers)
  limits = result["limits"]
  assert limits["sgemm_flops_per_s"] > 0 and limits["rmsprop_update_ms"] > 0
  for r in result["rows"]:  # every peer trained the same model (asserted in the run, too)
    assert r["param_count"] == result["param_count"]
    assert r["samples_per_s"] > 0 and 0 < r["fraction"] and r["bound"] in ("sgemm", "memory")
  ours = [r for r in result["rows"] if r["peer"] == "t2i_jax"]
  assert all(f"vs_{p}" in r for r in ours for p in peers[1:])


def test_the_model_counts_are_the_papers():
  config = bench_peers.get_config()
  assert bench_peers.param_count(bench_peers.model_dims(config)) == bench_peers.MODEL1_PARAMS
  with pytest.raises(AssertionError, match="params"):
    bench_peers.check_param_count("keras", 7_646_387, config)


def test_step_flops_count_one_step_whatever_the_steps_per_call():
  """The flow row's FLOPs come from one step compiled alone: XLA's count of a K-step loop
  is not K steps' (the loop body is counted a fixed number of times)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from t2i_jax import train  # pylint: disable=import-outside-toplevel
  from t2i_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  from tests.tiny_runs import tiny_config  # pylint: disable=import-outside-toplevel
  config = tiny_config("unused")
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
           "text": rng.standard_normal((8, 50), dtype=np.float32)}
  state = train.create_train_state(config, jax.random.key(0), batch)
  key = jax.random.key(1)
  flops = bench_peers.compiled_step_flops(state, batch, key)
  one = step_lib._jit_for_backend(step_lib._train_chunk).lower(  # pylint: disable=protected-access
      state, jax.tree.map(lambda x: x[None], batch), key, np.int32(1),
      skip_nonfinite=False).compile().cost_analysis()
  one = float((one[0] if isinstance(one, (list, tuple)) else one)["flops"])
  # The one-step chunk (no loop) adds its finiteness checks and selects to the step: a
  # few passes over this tiny model's params, 16% of its FLOPs here.
  assert 0.75 * one < flops <= one


def test_a_flow_experiment_that_cannot_be_timed_gives_one_line_and_the_others_still_run():
  config = bench_peers.get_config()
  config.flow = ("no_such_experiment", "model1")
  flows = bench_peers.run_job(config, "flow")["flow"]
  assert [f["experiment"] for f in flows] == ["no_such_experiment", "model1"]
  assert all("error" in f and "\n" not in f["error"] for f in flows)


def test_the_keras_peer_runs_with_tfs_own_onednn_setting(monkeypatch):
  """The library turns TF's oneDNN off (TF only moves data there, and its notice is noise);
  the Keras peer's subprocess gets it back: TF's default (on), or the user's own value."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel
  common.quiet_tensorflow()
  assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == (common.USER_TF_ONEDNN_OPTS or "0")
  seen = {}

  def fake_run(cmd, env, **kwargs):
    seen[cmd[-1]] = env.get("TF_ENABLE_ONEDNN_OPTS")
    return subprocess.CompletedProcess(cmd, 0, stdout='{"rows": []}\n', stderr="")

  monkeypatch.setattr(bench_peers.subprocess, "run", fake_run)
  for user in (None, "0"):
    monkeypatch.setattr(common, "USER_TF_ONEDNN_OPTS", user)
    for peer in ("keras", "torch"):
      bench_peers._child(bench_peers.get_config(), peer)  # pylint: disable=protected-access
    assert seen["--config.child=keras"] == (user or "1")
    assert seen["--config.child=torch"] == os.environ["TF_ENABLE_ONEDNN_OPTS"]
