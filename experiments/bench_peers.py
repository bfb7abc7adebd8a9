"""Benchmark: the paper's model 1 trained by t2i_jax, by Keras 3 and by PyTorch, in one run.

Command:
  python -m experiments.bench_peers                      # batches 1, 64 and 1024, every peer
  python -m experiments.bench_peers --config.quick=True  # a tiny model, a few steps (the test)
  python -m experiments.bench_peers --config.batches=(64,) --config.peers=('t2i_jax','keras')

Every peer trains the same model on the same data with the same loss and optimiser:
  * model 1 of the paper (``t2i_jax.models.paper``): Dense(100, relu) -> Dense(150) x 2 ->
    sampled z -> Dense(300, relu) -> Dense(600, sigmoid) -> Dense(12288, sigmoid), 7,646,388
    params; each peer's count is asserted equal to ours;
  * loss = MSE (mean over pixels and batch) + KL (mean over latent dims and batch), on uint8
    images scaled to [0, 1] inside the step;
  * RMSprop, learning rate 1e-2, rho 0.9, eps 1e-7, no momentum, not centred (our
    ``optim.keras_rmsprop``; Keras 3 puts eps inside the square root, which costs the same);
  * SYNTHETIC data from one seed: ``steps_per_window x batch`` random uint8 images and
    N(0, 1) caption vectors, cycled in the same order by every peer.
The peers: ``t2i_jax`` is ``train.create_train_state`` + ``train.train_chunk`` with the config
``configs.paper_config('model1', 1e-2)`` (K steps per jitted call, as the trainer runs it);
``keras`` is a ``keras.Model`` with the standard custom ``train_step`` (GradientTape),
``model.fit`` on a ``tf.data`` pipeline, ``jit_compile=True`` and ``steps_per_execution`` =
our K; ``torch`` is eager PyTorch with ``torch.optim.RMSprop(foreach=True)`` (skipped with one
line when torch is not installed; ``pip install -e .[peers]``).

Every row runs in its own subprocess, one at a time (no peer competes with another for the
cores, and no library's thread pools leak into the next), and the rows of one batch run back
to back, so that the drifting load of a shared machine hits the peers alike. A row is timed
as the best of ``repeats`` windows of ``steps_per_window`` steps, after one warm-up window
(compilation); ``rounds`` > 1 runs the whole cycle again and keeps each row's best.

The limits are measured in the same run, before and after the rows (the best is kept):
  * ``sgemm``: FLOP/s of a large float32 ``jnp.dot`` (best of several);
  * ``rmsprop``: the time of one RMSprop update (v, p from g) over as many floats as the
    model has params, timed as ``limit_updates`` in-place updates in one jitted loop (as
    the trainer runs them): 5 passes over 7.6M floats, the memory traffic a batch-1 step
    cannot avoid.
Each row is then put against the limit that binds it: the step's matmul FLOPs (counted
from the layer shapes: forward, weight gradient, input gradient) at the sgemm rate, or one
RMSprop update, whichever takes longer (FLOPs at batch 1024 and 64, the memory pass at
batch 1). ``fraction`` is that bound over the measured step time. ``floor`` adds the two
(the matmuls at the sgemm rate, then the update's memory pass, which needs the whole
gradient): no step of this model can beat it, whatever the framework.

The flow family's stage-2 step is timed too, for each experiment named in ``flow``
(``experiments.flow_shapes``: one text layer, the default run on shapes;
``experiments.flow_flickr8k``: ``configs.flow_config``'s two text layers over up to 24
words, as the data give them), at its default CPU batch, as the trainer runs it
(``steps_per_scan`` steps per jitted call), and put against the sgemm rate, with XLA's FLOP
count of one step compiled on its own.
The last line is JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import ml_collections

PEERS = ("t2i_jax", "keras", "torch")
MODEL1_PARAMS = 7_646_388
_CHILD_ENV = "T2I_BENCH_PEERS_CHILD"  # the parent's config, for a peer's subprocess
_PROGRESS = "[bench_peers]   "  # a child's progress lines, passed on by the parent


def get_config() -> ml_collections.ConfigDict:
  """Every peer at batches 1, 64 and 1024, each row twice (the best kept), and the limits.

  Command: python -m experiments.bench_peers
  Measured (idle 2-core AMD EPYC VM, 2026-12-04, PyTorch 2.13 installed; README
  "Benchmarks"): t2i_jax / Keras 1.17x at batch 1 (45% of the memory limit), 1.06x at 64,
  1.04x at 1024; batch 1024 at 78% of the sgemm rate (209 GFLOP/s); the flow step (4 per
  jitted call) at 46% of it; PyTorch 1.5-3.3x behind us. Run time 6.0 min. Rerun later
  that day (a slower hour, 7.1 min): 1.13x / 0.99x / 1.07x, 77%; the flow steps of
  flow_shapes / flow_flickr8k at 42% / 48% with 8 timed steps per window, 49% / 49% with
  32 (the default since). (Idle Intel Xeon VM, 2026-12-02: 1.03x / 1.12x / 1.17x, 84% of
  222 GFLOP/s, the flow step at one per call 41% with the encoder in it; 6.4 min.)
  Latest (idle AMD VM, 2026-12-05, stop 38, torch not installed; 5.8 min): 1.94x Keras at
  batch 1 (90% of the memory limit, 3.69 ms), 1.55x at 64, 1.58x at 1024 (62% of a slow
  186.6 GFLOP/s sgemm; Keras had a slow hour), flow_shapes' width-160 step 59% of sgemm,
  flow_flickr8k's 48%. Stop 39 (2026-12-06, the same code, another slow hour; 6.2 min):
  2.35x Keras at batch 1 (95% of a 4.03 ms update pass), 1.62x at 64 (Keras at 47 ms
  against its idle 26.6), 1.25x at 1024 (60% of 186.5 GFLOP/s); flow steps 56% / 44%.
  """
  return ml_collections.ConfigDict({
      "batches": (1, 64, 1024),
      "peers": PEERS,
      # Steps per jitted call of ours (the paper config's 256 at batch 1); Keras runs as many
      # per tf.function call (steps_per_execution).
      "steps_per_call": ((1, 256), (64, 16), (1024, 4)),
      "steps_per_window": ((1, 256), (64, 32), (1024, 8)),
      "repeats": 3,  # timed windows per row, after one warm-up window
      "max_window_s": 20.0,  # timed windows of a slow peer are cut to about this
      "torch_threads": 0,  # > 0: torch.set_num_threads (0 = torch's default)
      "model_kwargs": "",  # a dict literal for the model ('' = the paper's model 1)
      "learning_rate": 1e-2,
      "sgemm_size": 2048,
      "limit_repeats": 10,
      "limit_updates": 64,  # RMSprop updates per timed call of the memory limit
      # Also time the stage-2 step of these flow experiments (FLOP/s vs sgemm); () = none.
      "flow": ("flow_shapes", "flow_flickr8k"),
      "flow_steps": 32,  # per timed window (8 jitted calls): 8 steps gave 42-49% run to run
      "quick": False,  # a tiny model, a few steps: keeps this module from rotting (tests)
      "rounds": 2,  # run every row this many times, keep the best (the VM is noisy)
      "isolate": True,  # each peer in its own subprocess
      "child": "",  # internal: the peer this subprocess runs
      "seed": 0,
  })


def _quick(config) -> None:
  config.batches = (2,)
  config.steps_per_call = ((2, 2),)
  config.steps_per_window = ((2, 4),)
  config.repeats = 1
  config.rounds = 1
  config.max_window_s = 5.0
  config.flow = ()
  config.isolate = False  # one process: the test's budget has no room for three starts
  config.model_kwargs = str({"hidden_dim": 8, "latent_dim": 4, "decoder_dims": (8, 16)})
  config.sgemm_size = 256
  config.limit_repeats = 2
  config.limit_updates = 2


# ------------------------------------------------------------------------- shared parts


def model_dims(config) -> dict:
  """The paper model's layer widths (model 1 unless ``model_kwargs`` says otherwise)."""
  import ast  # pylint: disable=import-outside-toplevel
  kwargs = {"hidden_dim": 100, "latent_dim": 150, "decoder_dims": (300, 600)}
  if config.model_kwargs:
    kwargs.update(ast.literal_eval(config.model_kwargs))
  return {"text_dim": 50, "hidden": int(kwargs["hidden_dim"]), "latent": int(kwargs["latent_dim"]),
          "dec": tuple(int(d) for d in kwargs["decoder_dims"]), "out": 64 * 64 * 3}


def _layers(d: dict) -> list[tuple[int, int]]:
  """(fan_in, fan_out) of every Dense layer, in order."""
  return [(d["text_dim"], d["hidden"]), (d["hidden"], d["latent"]), (d["hidden"], d["latent"]),
          (d["latent"], d["dec"][0]), (d["dec"][0], d["dec"][1]), (d["dec"][1], d["out"])]


def param_count(d: dict) -> int:
  return sum(i * o + o for i, o in _layers(d))


def step_flops(d: dict, batch: int) -> int:
  """Matmul FLOPs of one training step: forward, weight gradient, and input gradient (not
  for the first layer, whose input is data)."""
  total = 0
  for n, (i, o) in enumerate(_layers(d)):
    total += 2 * i * o * batch * (2 if n == 0 else 3)
  return total


def _per_batch(pairs, batch: int) -> int:
  table = {int(b): int(v) for b, v in pairs}
  if batch in table:
    return table[batch]
  return table[min(table, key=lambda b: abs(b - batch))]


def synthetic_data(config, batch: int):
  """The pool every peer trains on: ``steps_per_window`` batches, the same for every peer."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  n = _per_batch(config.steps_per_window, batch) * batch
  rng = np.random.default_rng(config.seed + batch)
  return {"text": rng.standard_normal((n, 50), dtype=np.float32),
          "image": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)}


def _timed(config, run_steps, window: int, unit: int) -> dict:
  """One warm-up window of ``window`` steps (compilation), then ``repeats`` timed windows.

  A timed window is cut to about ``max_window_s`` (in multiples of ``unit`` steps, the steps
  of one call) when the warm-up took longer, so a slow peer does not hold the run for
  minutes. Returns the best window's time per step.
  """
  t0 = time.perf_counter()
  loss = run_steps(window)
  first = time.perf_counter() - t0
  timed = window
  if first > config.max_window_s:
    timed = max(unit, int(window * config.max_window_s / first) // unit * unit)
  best = math.inf
  for _ in range(config.repeats):
    t0 = time.perf_counter()
    loss = run_steps(timed)
    best = min(best, time.perf_counter() - t0)
  return {"steps_timed": timed, "best_window_s": best, "first_window_s": round(first, 2),
          "loss": float(loss)}


def _row(peer: str, batch: int, params: int, timing: dict, **extra) -> dict:
  steps, best = timing["steps_timed"], timing["best_window_s"]
  return {"peer": peer, "batch_size": batch, "param_count": int(params), "steps_timed": steps,
          "ms_per_step": 1000 * best / steps, "samples_per_s": batch * steps / best,
          "first_window_s": timing["first_window_s"], "loss": timing["loss"], **extra}


# ------------------------------------------------------------------------------- peers


def measure_limits(config, params: int) -> dict:
  """sgemm FLOP/s of a large jnp.dot and the time of one RMSprop update over ``params``."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def best_of(fn, *args):
    out = fn(*args)
    jax.block_until_ready(out)
    best = math.inf
    for _ in range(config.limit_repeats):
      t0 = time.perf_counter()
      out = fn(*args)
      jax.block_until_ready(out)
      best = min(best, time.perf_counter() - t0)
    return best

  n = int(config.sgemm_size)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  sgemm_s = best_of(dot, a, b)

  # The update as the trainer runs it: many in one jitted loop, p and v updated in place.
  # (One jitted call per update would allocate fresh 30 MB outputs each time and measure
  # the page faults: ~10 ms here against ~7 ms in place, slower than a whole batch-1 step.)
  updates = int(config.limit_updates)

  @jax.jit
  def rmsprop_loop(p, g, v):
    def body(_, pv):
      p, v = pv
      v = 0.9 * v + 0.1 * jnp.square(g)
      return p - config.learning_rate * g / (jnp.sqrt(v) + 1e-7), v
    return jax.lax.fori_loop(0, updates, body, (p, v))

  p = jnp.ones((params,), jnp.float32)
  g = jnp.full((params,), 1e-3, jnp.float32)
  v = jnp.zeros((params,), jnp.float32)
  rms_s = best_of(rmsprop_loop, p, g, v) / updates
  return {"sgemm_size": n, "sgemm_flops_per_s": 2 * n**3 / sgemm_s,
          "rmsprop_floats": int(params), "rmsprop_update_ms": 1000 * rms_s,
          "rmsprop_gb_per_s": 5 * 4 * params / rms_s / 1e9}


def run_t2i_jax(config, batch: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from t2i_jax import configs, train  # pylint: disable=import-outside-toplevel
  import ast  # pylint: disable=import-outside-toplevel
  c = configs.paper_config("model1", float(config.learning_rate))
  if config.model_kwargs:
    c.model_kwargs = ml_collections.ConfigDict({**c.model_kwargs.to_dict(),
                                                **ast.literal_eval(config.model_kwargs)})
  k = _per_batch(config.steps_per_call, batch)
  window = _per_batch(config.steps_per_window, batch)
  calls = max(1, window // k)
  window = calls * k
  c.batch_size, c.steps_per_scan = batch, k
  data = synthetic_data(config, batch)
  chunks = [jax.device_put({key: v[i * k * batch:(i + 1) * k * batch].reshape(
      (k, batch) + v.shape[1:]) for key, v in data.items()}) for i in range(calls)]
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = train.create_train_state(c, init_rng, {key: np.asarray(v[0]) for key, v in
                                                  chunks[0].items()})
  params = sum(x.size for x in jax.tree.leaves(state.params))

  box = [state]

  def run_steps(steps):
    state = box[0]
    for i in range(steps // k):
      state, metrics = train.train_chunk(state, chunks[i % calls], train_rng)
    jax.block_until_ready((state, metrics))
    box[0] = state
    return metrics["loss"]

  return _row("t2i_jax", batch, params, _timed(config, run_steps, window, k), steps_per_call=k)


def run_keras(config, batch: int) -> dict:
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  d = model_dims(config)
  k = _per_batch(config.steps_per_call, batch)
  window = _per_batch(config.steps_per_window, batch)
  window = max(k, window // k * k)
  keras.utils.set_random_seed(config.seed)
  glorot = "glorot_uniform"

  class PaperVAE(keras.Model):
    """Model 1 of the paper, in Keras, with the paper's loss in ``train_step``."""

    def __init__(self):
      super().__init__()
      self.enc = keras.layers.Dense(d["hidden"], activation="relu", kernel_initializer=glorot)
      self.z_mean = keras.layers.Dense(d["latent"], kernel_initializer=glorot)
      self.z_log_var = keras.layers.Dense(d["latent"], kernel_initializer=glorot)
      self.dec1 = keras.layers.Dense(d["dec"][0], activation="relu", kernel_initializer=glorot)
      self.dec2 = keras.layers.Dense(d["dec"][1], activation="sigmoid",
                                     kernel_initializer=glorot)
      self.out = keras.layers.Dense(d["out"], activation="sigmoid", kernel_initializer=glorot)
      self.seed_gen = keras.random.SeedGenerator(config.seed)
      self.loss_mean = keras.metrics.Mean(name="vae_loss")

    @property
    def metrics(self):
      return [self.loss_mean]

    def call(self, text, training=False):
      h = self.enc(text)
      mean, logvar = self.z_mean(h), self.z_log_var(h)
      eps = keras.random.normal(keras.ops.shape(mean), seed=self.seed_gen)
      z = mean + keras.ops.exp(0.5 * logvar) * eps
      recon = keras.ops.reshape(self.out(self.dec2(self.dec1(z))), (-1, 64, 64, 3))
      return recon, mean, logvar

    def train_step(self, data):
      text, image = data
      image = tf.cast(image, tf.float32) / 255.0
      with tf.GradientTape() as tape:
        recon, mean, logvar = self(text, training=True)
        mse = tf.reduce_mean(tf.square(recon - image))
        kl = -0.5 * tf.reduce_mean(1.0 + logvar - tf.square(mean) - tf.exp(logvar))
        loss = mse + kl
      grads = tape.gradient(loss, self.trainable_weights)
      self.optimizer.apply(grads, self.trainable_weights)
      self.loss_mean.update_state(loss)
      return {"vae_loss": self.loss_mean.result()}

  model = PaperVAE()
  model(tf.zeros((1, d["text_dim"])))
  params = model.count_params()
  model.compile(optimizer=keras.optimizers.RMSprop(
      learning_rate=float(config.learning_rate), rho=0.9, momentum=0.0, epsilon=1e-7,
      centered=False), jit_compile=True, steps_per_execution=k)
  data = synthetic_data(config, batch)
  ds = tf.data.Dataset.from_tensor_slices((data["text"], data["image"]))
  ds = ds.batch(batch, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE)

  def run_steps(steps):
    hist = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return hist.history["vae_loss"][-1]

  return _row("keras", batch, params, _timed(config, run_steps, window, k), steps_per_call=k,
              version=f"keras {keras.__version__}, tensorflow {tf.__version__}")


def run_torch(config, batch: int) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  d = model_dims(config)
  window = _per_batch(config.steps_per_window, batch)
  torch.manual_seed(config.seed)
  if config.torch_threads > 0:
    torch.set_num_threads(int(config.torch_threads))

  class PaperVAE(nn.Module):
    """Model 1 of the paper, in PyTorch (glorot-uniform kernels, zero biases, as Keras)."""

    def __init__(self):
      super().__init__()
      self.enc = nn.Linear(d["text_dim"], d["hidden"])
      self.z_mean = nn.Linear(d["hidden"], d["latent"])
      self.z_log_var = nn.Linear(d["hidden"], d["latent"])
      self.dec1 = nn.Linear(d["latent"], d["dec"][0])
      self.dec2 = nn.Linear(d["dec"][0], d["dec"][1])
      self.out = nn.Linear(d["dec"][1], d["out"])
      for m in self.modules():
        if isinstance(m, nn.Linear):
          nn.init.xavier_uniform_(m.weight)
          nn.init.zeros_(m.bias)

    def forward(self, text):
      h = torch.relu(self.enc(text))
      mean, logvar = self.z_mean(h), self.z_log_var(h)
      z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
      h = torch.sigmoid(self.dec2(torch.relu(self.dec1(z))))
      return torch.sigmoid(self.out(h)).reshape(-1, 64, 64, 3), mean, logvar

  model = PaperVAE()
  params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.RMSprop(model.parameters(), lr=float(config.learning_rate), alpha=0.9,
                            eps=1e-7, momentum=0.0, centered=False, foreach=True)
  data = synthetic_data(config, batch)
  text = torch.from_numpy(data["text"]).reshape(window, batch, -1)
  image = torch.from_numpy(np.ascontiguousarray(data["image"])).reshape(window, batch, 64, 64, 3)

  def run_steps(steps):
    for i in range(steps):
      target = image[i % window].float() / 255.0
      recon, mean, logvar = model(text[i % window])
      mse = torch.mean(torch.square(recon - target))
      kl = -0.5 * torch.mean(1.0 + logvar - torch.square(mean) - torch.exp(logvar))
      loss = mse + kl
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return float(loss)

  return _row("torch", batch, params, _timed(config, run_steps, window, 1),
              version=f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def run_flow(config, experiment: str) -> dict:
  """The stage-2 training step of ``experiments.<experiment>`` (its model, default CPU
  batch and steps per call) on synthetic captions, with a randomly initialised frozen stage 1,
  as the trainer runs it: on the stage-1 latents of the images, encoded once
  (``Method.image_features``). Its FLOPs are XLA's count for the compiled step."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import importlib  # pylint: disable=import-outside-toplevel
  from t2i_jax import methods, train  # pylint: disable=import-outside-toplevel
  c = importlib.import_module(f"experiments.{experiment}").get_config().stage2
  if c.model != "flow":
    raise ValueError(f"experiments.{experiment}'s stage 2 is {c.model!r}, not the flow family")
  batch, k, t = int(c.batch_size), int(c.steps_per_scan), int(c.max_caption_len)
  method = methods.get(c)
  frozen = {"params": method.ae.init(jax.random.key(0), jnp.zeros(
      (1,) + tuple(method.ae.image_shape)))["params"], "latent_scale": jnp.float32(1.0)}
  rng = np.random.default_rng(config.seed)
  images = rng.integers(0, 256, (k * batch, 64, 64, 3), dtype=np.uint8)
  text = rng.standard_normal((k, batch, t, 50), dtype=np.float32)
  mask = np.arange(t)[None, None] < rng.integers(3, t + 1, (k, batch, 1))
  state = train.create_train_state(c, jax.random.key(1), {"image": images[:batch],
                                                          "text": text[0], "mask": mask[0]},
                                   frozen=frozen, method=method)
  features = method.image_features(frozen, images)
  chunk = {"features": features.reshape((k, batch) + features.shape[1:]), "text": text,
           "mask": mask}
  chunk, train_rng = jax.device_put(chunk), jax.random.key(2)
  flops = compiled_step_flops(state, jax.tree.map(lambda x: x[0], chunk), train_rng)
  box = [state]

  def run_steps(steps):
    state = box[0]
    for _ in range(steps // k):
      state, metrics = train.train_chunk(state, chunk, train_rng)
    jax.block_until_ready((state, metrics))
    box[0] = state
    return metrics["loss"]

  params = sum(x.size for x in jax.tree.leaves(state.params))
  row = _row("t2i_jax", batch, params, _timed(config, run_steps, int(config.flow_steps), k),
             model=f"flow (stage 2 of experiments.{experiment})", experiment=experiment,
             steps_per_call=k, text_layers=int(c.model_kwargs.text_layers),
             max_caption_len=t)
  row["step_gflop"] = flops / 1e9
  return row


def compiled_step_flops(state, batch, rng) -> float:
  """XLA's FLOP count of one training step (``train.train_step``), compiled on its own.

  Not the count of the K-step program that is timed: XLA's cost analysis counts a while
  loop's body a fixed number of times whatever its trip count (at K = 4 it gave 2.0x one
  step's FLOPs, not 4x), so the loop's count divided by K is wrong.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from t2i_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  cost = jax.jit(step_lib.train_step).lower(state, batch, rng).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


_RUNNERS = {"t2i_jax": run_t2i_jax, "keras": run_keras, "torch": run_torch}


def torch_available() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec("torch") is not None


def check_param_count(peer: str, count: int, config) -> None:
  """Every peer must be the exact model: model 1 has 7,646,388 params."""
  want = param_count(model_dims(config))
  assert count == want, f"{peer} has {count:,} params, the model {want:,}"
  assert config.model_kwargs or count == MODEL1_PARAMS, (
      f"{peer} has {count:,} params, model 1 {MODEL1_PARAMS:,}")


def run_job(config, job: str) -> dict:
  """One job in this process: 'limits', 'flow' (every experiment in ``config.flow``), or a
  peer's rows at ``config.batches``."""
  want = param_count(model_dims(config))
  if job == "limits":
    return {"limits": measure_limits(config, want)}
  if job == "flow":
    flows = []
    for experiment in config.flow:
      try:
        flow = run_flow(config, str(experiment))
      except Exception as e:  # pylint: disable=broad-except  # one line, the others still run
        flow = {"experiment": str(experiment), "error": f"{type(e).__name__}: {e}"[:500]}
        print(f"{_PROGRESS}flow {experiment}: not usable: {flow['error']}", file=sys.stderr,
              flush=True)
      else:
        print(f"{_PROGRESS}flow {experiment} batch {flow['batch_size']:5d}: "
              f"{flow['samples_per_s']:10.1f} samples/s {flow['ms_per_step']:9.3f} ms/step",
              file=sys.stderr, flush=True)
      flows.append(flow)
    return {"flow": flows}
  rows = []
  for batch in config.batches:
    row = _RUNNERS[job](config, int(batch))
    check_param_count(job, row["param_count"], config)
    row["load_average"] = _loadavg()
    rows.append(row)
    print(f"{_PROGRESS}{job:8s} batch {batch:5d}: {row['samples_per_s']:10.1f} samples/s "
          f"{row['ms_per_step']:9.3f} ms/step  (first window {row['first_window_s']:.1f} s, "
          f"load {row['load_average'][0] if row['load_average'] else '?'})",
          file=sys.stderr, flush=True)
  return {"rows": rows}


def _child(config, peer: str, batches=None) -> dict:
  config = ml_collections.ConfigDict(config.to_dict())
  if batches is not None:
    config.batches = tuple(batches)
  if not config.isolate:
    return run_job(config, peer)
  env = dict(os.environ, **{_CHILD_ENV: json.dumps(config.to_dict())})
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if peer == "keras":  # TF as its users run it: oneDNN on (TF's default), or their setting
    from t2i_jax.data import common  # pylint: disable=import-outside-toplevel
    env["TF_ENABLE_ONEDNN_OPTS"] = common.USER_TF_ONEDNN_OPTS or "1"
  proc = subprocess.run([sys.executable, "-m", "experiments.bench_peers",
                         f"--config.child={peer}"], env=env, capture_output=True, text=True,
                        check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"the {peer} subprocess failed:\n{proc.stderr[-3000:]}")
  sys.stderr.write("".join(line[len(_PROGRESS) - 2:] + "\n" for line in proc.stderr.splitlines()
                           if line.startswith(_PROGRESS)))
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ report


def _loadavg() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def annotate(rows: list[dict], limits: dict, dims: dict) -> None:
  """Each row against the limit that binds it, and ours against each peer."""
  ours = {r["batch_size"]: r for r in rows if r["peer"] == "t2i_jax"}
  for r in rows:
    flops = step_flops(dims, r["batch_size"])
    step_s = r["ms_per_step"] / 1000
    flop_s = flops / limits["sgemm_flops_per_s"]
    mem_s = limits["rmsprop_update_ms"] / 1000
    r["step_gflop"] = flops / 1e9
    r["gflop_per_s"] = flops / step_s / 1e9
    r["sgemm_fraction"] = flop_s / step_s
    r["memory_fraction"] = mem_s / step_s
    r["bound"] = "sgemm" if flop_s >= mem_s else "memory"
    r["fraction"] = max(flop_s, mem_s) / step_s
    # The serial floor: the matmuls at the sgemm rate, then the update's memory pass (the
    # update needs the whole gradient, and the next step's forward the updated params).
    r["floor_ms"] = 1000 * (flop_s + mem_s)
    r["floor_fraction"] = (flop_s + mem_s) / step_s
    mine = ours.get(r["batch_size"])
    if mine is not None and r["peer"] != "t2i_jax":
      mine[f"vs_{r['peer']}"] = mine["samples_per_s"] / r["samples_per_s"]


def table(result: dict) -> str:
  """The Markdown table the README shows."""
  peers = [p for p in result["peers"] if p != "t2i_jax"]
  head = ("| peer | batch | samples/s | ms/step | " +
          "".join(f"t2i_jax / {p} | " for p in peers) + "GFLOP/s | bound | fraction of bound | floor ms | fraction of floor |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in sorted(result["rows"], key=lambda r: (r["batch_size"], PEERS.index(r["peer"]))):
    ratios = "".join(
        (f"{r[f'vs_{p}']:.2f}x | " if f"vs_{p}" in r else "- | ") for p in peers)
    lines.append(f"| {r['peer']} | {r['batch_size']} | {r['samples_per_s']:,.1f} | "
                 f"{r['ms_per_step']:.3f} | {ratios}{r['gflop_per_s']:.1f} | {r['bound']} | "
                 f"{100 * r['fraction']:.0f}% | {r['floor_ms']:.2f} | "
                 f"{100 * r['floor_fraction']:.0f}% |")
  return "\n".join(lines)


def run(config) -> dict:
  from t2i_jax import bench  # pylint: disable=import-outside-toplevel
  if config.child:
    return run_job(config, config.child)
  if config.quick:
    _quick(config)
  config.batches = tuple(int(b) for b in config.batches)
  config.peers = tuple(str(p) for p in config.peers)
  unknown = set(config.peers) - set(PEERS)
  if unknown or "t2i_jax" not in config.peers:
    from t2i_jax.errors import UserError  # pylint: disable=import-outside-toplevel
    raise UserError(f"--config.peers must include 't2i_jax' and name only {PEERS}; got "
                    f"{config.peers}")
  peers = list(config.peers)
  notes = []
  if "torch" in peers and not torch_available():
    peers.remove("torch")
    notes.append("torch: not installed, skipped (pip install -e '.[peers]')")
    print(notes[-1], flush=True)
  load_before = _loadavg()
  # Rows of one batch run back to back (the load of a shared machine drifts over minutes),
  # and the whole cycle ``rounds`` times, keeping each row's best; the limits are measured
  # before and after, keeping the best (the fractions are then conservative).
  limits = _child(config, "limits")["limits"]
  best = {}
  for _ in range(int(config.rounds)):
    for batch in config.batches:
      for peer in peers:
        row = _child(config, peer, (batch,))["rows"][0]
        key = (peer, batch)
        if key not in best or row["ms_per_step"] < best[key]["ms_per_step"]:
          best[key] = row
  rows = [best[(p, b)] for b in config.batches for p in peers]
  config.flow = tuple(str(e) for e in config.flow)
  flows = _child(config, "flow")["flow"] if config.flow else []
  again = _child(config, "limits")["limits"]
  if again["sgemm_flops_per_s"] > limits["sgemm_flops_per_s"]:
    limits.update({k: again[k] for k in ("sgemm_size", "sgemm_flops_per_s")})
  if again["rmsprop_update_ms"] < limits["rmsprop_update_ms"]:
    limits.update({k: again[k] for k in ("rmsprop_update_ms", "rmsprop_gb_per_s")})
  dims = model_dims(config)
  annotate(rows, limits, dims)
  for flow in flows:
    if "error" not in flow:
      flow["gflop_per_s"] = flow["step_gflop"] / (flow["ms_per_step"] / 1000)
      flow["sgemm_fraction"] = flow["gflop_per_s"] * 1e9 / limits["sgemm_flops_per_s"]
  result = {"machine": bench.machine(), "load_average_before": load_before,
            "load_average_after": _loadavg(), "peers": peers, "notes": notes,
            "param_count": param_count(dims), "data": "synthetic random, real shapes",
            "limits": limits, "rows": rows, "flow": flows, **bench.peak_rss_mb()}
  print(f"limits: sgemm {limits['sgemm_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({limits['sgemm_size']}^3 jnp.dot); one RMSprop update over "
        f"{limits['rmsprop_floats']:,} floats {limits['rmsprop_update_ms']:.2f} ms "
        f"({limits['rmsprop_gb_per_s']:.1f} GB/s over 5 passes)")
  print(f"load average (1, 5, 15 min): before {load_before}, after {result['load_average_after']}")
  print(table(result))
  for flow in flows:
    if "error" in flow:
      print(f"flow, experiments.{flow['experiment']}: not usable: {flow['error']}")
      continue
    print(f"flow, stage 2 of experiments.{flow['experiment']} ({flow['param_count']:,} params, "
          f"{flow['text_layers']} text layers) batch {flow['batch_size']}: "
          f"{flow['samples_per_s']:,.1f} samples/s, {flow['ms_per_step']:.1f} ms/step, "
          f"{flow['step_gflop']:.1f} GFLOP/step (XLA's count) = {flow['gflop_per_s']:.1f} GFLOP/s"
          f" = {100 * flow['sgemm_fraction']:.0f}% of sgemm")
  return result


def main(argv: list[str]) -> int:
  from t2i_jax import bench  # pylint: disable=import-outside-toplevel
  from t2i_jax import configs  # pylint: disable=import-outside-toplevel
  if os.environ.get(_CHILD_ENV) and any(a.startswith("--config.child=") for a in argv):
    config = ml_collections.ConfigDict(json.loads(os.environ[_CHILD_ENV]))
    config = configs.apply_overrides(config, argv)
    print(json.dumps(run_job(config, config.child)))
    return 0
  return bench.main(get_config, run, argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
