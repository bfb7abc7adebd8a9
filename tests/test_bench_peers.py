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
