"""Data parallelism, bf16 compute and on-device data, on 4 forced CPU devices.

XLA reads --xla_force_host_platform_device_count when jax starts, so the checks run in a
fresh subprocess whose environment sets it before jax is imported; the subprocess prints
one JSON line of results that the tests below assert on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from t2i_jax import configs
from t2i_jax.errors import UserError

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from t2i_jax import configs, parallel, train
    from t2i_jax.data import pipeline

    assert len(jax.devices()) == 4, jax.devices()
    TINY = {"hidden_dim": 8, "latent_dim": 4, "decoder_dims": (8, 16)}
    B, K, STEPS, N = 8, 1, 20, 64  # K: steps per jitted chunk; per-step losses
    rs = np.random.RandomState(0)
    table = pipeline.Table(
        images=rs.randint(0, 256, (16, 64, 64, 3)).astype(np.uint8),
        image_index=rs.randint(0, 16, N).astype(np.int32),
        text=rs.randn(N, 50).astype(np.float32), mask=None,
        caption_index=np.zeros(N, np.int32), image_ids=np.arange(16).astype(str),
        captions=np.array(["c"] * N), clean_captions=np.array(["c"] * N), extras={})

    def config(**kw):
      c = configs.base_config()
      c.model_kwargs = TINY
      c.batch_size = B
      for k, v in kw.items():
        c[k] = v
      return c

    def run(mesh, cfg, on_device=False):
      init_rng, rng = jax.random.split(jax.random.key(0))
      state = parallel.replicate(train.create_train_state(cfg, init_rng, table.pairs(np.arange(1))), mesh)
      rng = parallel.replicate(rng, mesh)
      data = train.device_table(table, mesh) if on_device else None
      perm = pipeline.epoch_permutation(N, cfg.seed, 0)[: (N // B) * B].reshape(-1, B)
      losses = []
      for i in range(STEPS // K):
        idx = np.concatenate([perm] * 3)[i * K:(i + 1) * K]
        if on_device:
          state, m = train.train_chunk_on_device(state, data, parallel.shard_local(idx, mesh), rng)
        else:
          chunk = {k: v.reshape(K, B, *v.shape[1:]) for k, v in table.pairs(idx.reshape(-1)).items()}
          state, m = train.train_chunk(state, parallel.shard_local(chunk, mesh), rng)
        losses.append(float(m["loss"]))
      return losses, state

    out = {}
    mesh1, mesh4 = parallel.make_mesh(jax.devices()[:1]), parallel.make_mesh()
    out["one"], s1 = run(mesh1, config())
    out["four"], s4 = run(mesh4, config())
    out["params_max_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                 for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)))
    out["four_replicated"] = all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 4
                               for x in jax.tree.leaves(s4))
    out["device_four"], _ = run(mesh4, config(), on_device=True)
    out["bf16_four"], sb = run(mesh4, config(precision="bfloat16"))
    out["bf16_param_dtype"] = str(jax.tree.leaves(sb.params)[0].dtype)
    out["bf16_opt_dtypes"] = sorted({str(x.dtype) for x in jax.tree.leaves(sb.opt_state)})

    # The tf.data path yields the same [K, B] batches as the on-device gather, and per-process
    # slices of make_dataset put side by side are the single-process batches.
    whole = next(pipeline.make_dataset(table, batch_size=B, seed=0, chunk=5).as_numpy_iterator())
    perm = pipeline.epoch_permutation(N, 0, 0)[: (N // B) * B].reshape(-1, B)
    gathered = jax.device_get(pipeline.gather_pairs(train.device_table(table, mesh4),
                                                   perm[:5].astype(np.int32)))
    out["tf_matches_device"] = all(np.array_equal(whole[k], gathered[k]) for k in whole)
    halves = [next(pipeline.make_dataset(table, batch_size=B, seed=0, chunk=5, process_index=p,
                                         process_count=2).as_numpy_iterator()) for p in range(2)]
    out["process_slices_match"] = all(
        np.array_equal(np.concatenate([h[k] for h in halves], axis=1), whole[k]) for k in whole)
    from t2i_jax.errors import UserError
    try:
      parallel.check_batch_size(6, mesh4)
      out["bad_batch_error"] = ""
    except UserError as e:
      out["bad_batch_error"] = str(e)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_four_devices_match_one_device(results):
  np.testing.assert_allclose(results["four"], results["one"], rtol=0, atol=1e-5)
  assert results["params_max_diff"] < 1e-5
  assert len(results["one"]) == 20
  assert results["four_replicated"]  # params and optimiser state on all 4 devices


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_on_device_data_gives_the_same_batches_and_losses(results):
  assert results["tf_matches_device"]
  np.testing.assert_allclose(results["device_four"], results["four"], rtol=0, atol=1e-6)


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_process_slices_make_up_the_global_batch(results):
  assert results["process_slices_match"]


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_bfloat16_compute_keeps_float32_state_and_close_losses(results):
  assert results["bf16_param_dtype"] == "float32"
  assert set(results["bf16_opt_dtypes"]) <= {"float32", "int32"}
  bf16, f32 = np.array(results["bf16_four"]), np.array(results["four"])
  assert np.all(np.isfinite(bf16))
  np.testing.assert_allclose(bf16, f32, rtol=0.05)


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_batch_size_must_split_over_the_devices(results):
  assert "batch_size=6 does not split over 4 devices" in results["bad_batch_error"]
  assert "multiple of 4 (e.g. 4 or 8)" in results["bad_batch_error"]


def test_unknown_precision_is_a_user_error(tmp_path):
  from t2i_jax import train  # pylint: disable=import-outside-toplevel
  c = configs.base_config()
  c.precision = "float16"
  with pytest.raises(UserError, match="precision"):
    train.train_and_evaluate(c, tmp_path)


def test_cpu_devices_split_a_fresh_process_into_host_devices():
  """--config.cpu_devices=N gives a fresh process N CPU devices (parallel.maybe_use_cpu_devices)."""
  code = ("from t2i_jax import configs, parallel\n"
          "c = configs.base_config(); c.cpu_devices = 3\n"
          "assert parallel.maybe_use_cpu_devices(c) == 3\n"
          "import jax; print(len(jax.devices('cpu')))\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], env=dict(env, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=120, check=True)
  assert out.stdout.strip().splitlines()[-1] == "3"


def test_cpu_devices_after_jax_started_is_one_note_not_a_crash(capsys):
  import jax  # pylint: disable=import-outside-toplevel
  from t2i_jax import parallel  # pylint: disable=import-outside-toplevel
  have = len(jax.devices("cpu"))  # starts the backends, as any test before this one may have
  c = configs.base_config()
  assert parallel.maybe_use_cpu_devices(c) == 0
  assert capsys.readouterr().out == ""
  c.cpu_devices = have + 1
  assert parallel.maybe_use_cpu_devices(c) == have + 1
  assert f"cpu_devices={have + 1} not applied" in capsys.readouterr().out
  assert len(jax.devices("cpu")) == have


def test_negative_cpu_devices_is_a_user_error(tmp_path):
  from t2i_jax import train  # pylint: disable=import-outside-toplevel
  c = configs.base_config()
  c.cpu_devices = -1
  with pytest.raises(UserError, match="cpu_devices must be at least 0"):
    train.train_and_evaluate(c, tmp_path)


_DRAW_SCRIPT = textwrap.dedent("""
    import json
    import jax, ml_collections, numpy as np
    from t2i_jax import configs, sample
    from t2i_jax.methods.flow import FlowMethod
    from t2i_jax.methods.latent_ae import LatentAEMethod

    assert len(jax.local_devices()) == 3, jax.local_devices()
    c = configs.base_config()
    c.model_kwargs = ml_collections.ConfigDict({
        "ae": {"channels": (8,), "latent_channels": 4, "num_res": 0}, "patch": 4,
        "width": 16, "depth": 1, "num_heads": 2, "text_heads": 2, "max_len": 6})
    rs = np.random.RandomState(0)
    batch = {"image": rs.rand(2, 64, 64, 3).astype(np.float32),
             "text": rs.randn(2, 6, 50).astype(np.float32), "mask": np.ones((2, 6), bool)}
    ae = LatentAEMethod.from_config(c)
    method = FlowMethod.from_config(c)
    frozen = method.frozen_from_params(ae.init(jax.random.key(0), batch))
    frozen["latent_scale"] = np.float32(1.0)
    params = method.init(jax.random.key(1), batch)
    # Random output layers and gates: the zero-initialised ones would draw pure noise.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                       for p, k in zip(leaves, keys)])
    text = rs.randn(5, 6, 50).astype(np.float32)
    options = sample.resolve_options(method, c, {"steps": 3})
    draw = lambda t, n: sample.draw(method, params, frozen, t, n=n, seed=0, options=options)
    calls, generate_fn = [], sample._generate_fn
    def spy(m):  # records each call's rows and the devices they are split over
      fn = generate_fn(m)
      def call(params, frozen, text, *rest, **kw):
        sharding = getattr(text, "sharding", None)
        calls.append([text.shape[0], len(sharding.device_set) if sharding else 1])
        return fn(params, frozen, text, *rest, **kw)
      return call
    sample._generate_fn = spy
    three = draw(text, 2)  # 10 rows: a call of DRAW_BATCH (64), padded to 66 for 3 devices
    devices = jax.local_devices()
    sample.jax.local_devices = lambda: devices[:1]  # the same draw on one device
    one = draw(text, 2)
    print(json.dumps({"three": three.tolist(), "one": one.tolist(), "calls": calls}))
""")


def test_sampling_splits_rows_over_the_host_devices():
  """sample.draw on 3 host devices: each call's rows split over them (padded to a multiple
  of 3), the images those of one device up to uint8 rounding."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _DRAW_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = {k: np.asarray(v, np.int32) for k, v in
         json.loads(proc.stdout.strip().splitlines()[-1]).items()}
  assert out["calls"].tolist() == [[66, 3], [64, 1]]  # rows per call, devices they span
  assert out["three"].shape == (5, 2, 64, 64, 3)
  assert out["three"].std() > 5  # images, not a constant
  diff = np.abs(out["three"] - out["one"])
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


_SPLIT_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from t2i_jax import parallel
    from t2i_jax.data import pipeline
    from t2i_jax.train import step

    assert len(jax.devices()) == 4, jax.devices()
    mesh = parallel.make_mesh()
    rs = np.random.RandomState(0)
    lengths = rs.randint(2, 9, 64)  # words per caption, padded to 8
    mask = np.arange(8)[None] < lengths[:, None]
    data = {"images": rs.randint(0, 256, (16, 4, 4, 3)).astype(np.uint8),
            "image_index": rs.randint(0, 16, 64).astype(np.int32),
            "text": (rs.randn(64, 8, 3) * mask[..., None]).astype(np.float32), "mask": mask}
    grid = pipeline.epoch_permutation(64, 0, 0)[:48].reshape(3, 16)
    grid = pipeline.length_split_grid(grid, lengths, short_len=5, long_rows=8,
                                      num_devices=4).astype(np.int32)
    index = parallel.shard_local(grid, mesh)
    long, short = jax.jit(lambda d, i: step.split_rows(pipeline.gather_pairs(d, i), 8, 5, mesh))(
        data, index)
    shards = grid.reshape(3, 4, 4)  # [steps, devices, rows]: 2 long rows first in each shard
    out = {"long_rows": np.asarray(long["mask"]).sum(-1).tolist(),
           "want_long_rows": lengths[shards[:, :, :2].reshape(3, 8)].tolist(),
           "short_rows": np.asarray(short["mask"]).sum(-1).tolist(),
           "want_short_rows": lengths[shards[:, :, 2:].reshape(3, 8)].tolist(),
           "text_same": bool(np.array_equal(
               np.asarray(short["text"]), data["text"][shards[:, :, 2:].reshape(3, 8)][..., :5, :])),
           "shapes": [list(long["text"].shape), list(short["text"].shape)],
           "devices": [len(long["text"].sharding.device_set),
                       len(short["text"].sharding.device_set)]}
    print(json.dumps(out))
""")


def test_split_rows_cut_each_shard_into_its_long_and_short_rows_on_four_devices():
  """step.split_rows on 4 host devices: each part takes the same rows of every shard, the
  long part holds every caption over 5 words, the short part loses only padding, and both
  stay split over the 4 devices."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _SPLIT_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["long_rows"] == out["want_long_rows"]
  assert out["short_rows"] == out["want_short_rows"]
  assert max(max(r) for r in out["short_rows"]) <= 5 < max(max(r) for r in out["long_rows"])
  assert out["text_same"]
  assert out["shapes"] == [[3, 8, 8, 3], [3, 8, 5, 3]]
  assert out["devices"] == [4, 4]


_TRAIN_DEVICES_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from t2i_jax import configs, train
    from t2i_jax.errors import UserError

    assert len(jax.devices()) == 2, jax.devices()
    def config(**kw):
      c = configs.base_config()
      c.dataset, c.data_dir, c.num_images = "shapes", sys.argv[1] + "/tfds", 40
      c.model_kwargs = {"hidden_dim": 8, "latent_dim": 4, "decoder_dims": (8, 16)}
      c.batch_size, c.num_epochs, c.max_steps, c.steps_per_scan = 8, 1, 4, 2
      c.eval_batch_size, c.eval_sample_captions = 16, 0
      for k, v in kw.items():
        c[k] = v
      return c
    out = {}
    for n in (1, 0):
      state = train.train_and_evaluate(config(train_devices=n), f"{sys.argv[1]}/run{n}")
      out[f"devices_{n}"] = json.load(open(f"{sys.argv[1]}/run{n}/run.json"))["num_devices"]
      out[f"param_devices_{n}"] = len(jax.tree.leaves(state.params)[0].sharding.device_set)
    try:
      train.train_and_evaluate(config(train_devices=3), f"{sys.argv[1]}/run3")
    except UserError as e:
      out["error"] = str(e)
    print(json.dumps(out))
""")


def test_train_devices_trains_on_the_first_devices_of_the_process(tmp_path):
  """--config.train_devices=1 in a process of 2 host devices trains on one device (the
  run's mesh and params), 0 on both; more than the process has is one line."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _TRAIN_DEVICES_SCRIPT, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (out["devices_1"], out["param_devices_1"]) == (1, 1)
  assert (out["devices_0"], out["param_devices_0"]) == (2, 2)
  assert "train_devices=3" in out["error"] and "\n" not in out["error"]
