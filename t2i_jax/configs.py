"""Experiment configs: shared defaults, ``--config.key=value`` overrides, JSON round trips.

An experiment is a Python module with ``get_config()`` returning an ``ml_collections``
``ConfigDict``; every experiment starts from ``base_config()`` so that all of them share one
set of key names, which the trainer, the checkpoints and the CLI rely on. Overrides are typed
by the field they replace, so ``--config.batch_size=abc`` fails before any data is loaded,
with a one-line message.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import ml_collections

from t2i_jax.errors import UserError

_PREFIX = "--config."

# Sub-dicts whose keys are free-form (constructor or optimiser keyword arguments): an
# override may add a key there, whose value is then read as a Python literal.
OPEN_DICTS = ("model_kwargs", "optimizer_kwargs")

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")


def base_config() -> ml_collections.ConfigDict:
  """Every shared key with its default; experiments copy this and change what they need."""
  c = ml_collections.ConfigDict()
  # Data (see t2i_jax.data.pipeline).
  c.dataset = "shapes"  # shapes | flickr8k | folder (your own images and captions)
  c.data_dir = ""  # TFDS data dir; '' = $T2I_DATA_DIR or ~/tensorflow_datasets
  c.manual_dir = ""  # Flickr8k / captioned folder, used to prepare it on first use
  c.image_mode = "paper"  # Flickr8k / folder image preprocessing
  c.folder_test_fraction = 0.05  # folder: share of images in test (by a hash of the path)
  c.split_scheme = "paper"  # Flickr8k: 'paper' (caption #4 is test) or 'official'
  c.glove = ""  # '' = built-in GloVe 6B 50d, else a path to a GloVe text file
  c.caption_mode = "sum"  # sum | mean | sequence
  c.max_caption_len = 32  # sequence mode only
  # Sequence mode, data on the device: each batch's split_long_rows longest captions are
  # padded to max_caption_len and the rest to split_caption_len words, and the step runs
  # the model on the two parts (loss and metrics: their row-weighted means), so short
  # captions do not pay the long ones' padding and every batch keeps its random mix
  # (pipeline.length_split_grid). 0 = one part, every caption padded to max_caption_len.
  c.split_caption_len = 0
  c.split_long_rows = 0
  c.remove_stopwords = True
  c.caption_dtype = "float32"
  c.num_images = 20000  # shapes only
  c.shapes_seed = 0  # shapes only
  # Model and objective.
  c.model = "model1"  # a name from t2i_jax.models.available_models()
  c.model_kwargs = ml_collections.ConfigDict()  # overrides of the model's defaults
  c.kl_weight = 1.0
  c.kl_warmup_steps = 0  # 'cvae' loss: steps of the linear KL warm-up (0 = none)
  c.free_bits = 0.0  # 'cvae' loss: nats per latent dim that cost nothing (0 = off)
  c.gsnn_weight = 0.0  # 'cvae' loss: weight of the prior-path MSE (Sohn et al.'s hybrid)
  c.equivariance_weight = 0.0  # 'latent_ae' loss: weight of the scale-equivariance term
  c.sample_temperature = 1.0  # default for t2i sample/evaluate: prior std scale (CVAE)
  c.obs_sigma = 0.1  # decoder scale of the reported negative ELBO (losses.negative_elbo)
  # Optimisation.
  c.optimizer = "rmsprop"  # rmsprop (Keras-matching) | adam | adamw | muon (optim.py)
  c.optimizer_kwargs = ml_collections.ConfigDict()
  c.learning_rate = 1e-3
  c.warmup_steps = 0  # linear learning-rate warm-up over this many steps (0 = none)
  # After the warm-up: 'constant'; 'cosine' down to lr * lr_final_fraction at step
  # lr_decay_steps (warm-up included; constant after it; usually the run's max_steps),
  # measured no better for the flow family on shapes (README, experiments.flow_shapes); or
  # 'wsd' (warm-up, stable, decay): constant until lr_decay_start, then linear down to
  # lr * lr_final_fraction at lr_decay_steps, then constant; on flow_shapes under AdamW the
  # same as constant within a run's noise, under Muon (its default) 1-2 points better (README).
  # A decay to 0 (lr_final_fraction 0) ends the run: max_steps past lr_decay_steps is refused.
  c.lr_schedule = "constant"  # constant | cosine | wsd
  c.lr_decay_start = 0
  c.lr_decay_steps = 0
  c.lr_final_fraction = 0.0
  c.grad_clip_norm = 0.0  # clip gradients to this global norm (0 = off)
  c.batch_size = 64
  c.num_epochs = 15
  c.max_steps = 0  # stop after this many optimiser steps in total; 0 = no limit
  c.seed = 0
  c.steps_per_scan = 64  # optimiser steps per jitted lax.scan call
  # Scale and speed (t2i_jax.parallel). batch_size is the global batch over all devices.
  c.precision = "float32"  # float32 | bfloat16 (compute only; params/optimiser stay float32)
  c.distributed = False  # jax.distributed.initialize() (multi-host; env vars also trigger it)
  # > 0: split a CPU host into this many XLA devices, each running its slice of every batch
  # (parallel.maybe_use_cpu_devices; 0 = JAX's one CPU device). No effect on accelerators.
  c.cpu_devices = 0
  # > 0: train on the first this many devices only (one process), e.g. a step whose small
  # ops do not gain from splitting while the process's other work does. 0 = all devices.
  c.train_devices = 0
  c.data_on_device = "auto"  # auto | always | never: keep the train table on the devices
  c.device_data_fraction = 0.25  # 'auto': on device if it fits this share of device memory
  # 'auto' on the CPU, which reports no device memory: this many MB, or with 0 the same
  # share of the host's memory (1,024 MB before stop 40 sent 20,000+ shapes images through
  # tf.data, where the flow model encodes every batch again: 0.83x the steps/s).
  c.device_data_budget_mb = 0
  # Evaluation, logging and checkpoints.
  c.eval_batch_size = 256
  c.eval_every_epochs = 1
  # A checkpoint at every this-many epoch ends, at the run's end, at checkpoint_every_steps
  # and on SIGINT / SIGTERM. Resuming from any of them is exact; a run killed outright
  # (SIGKILL, power) loses what it trained since the last one.
  c.checkpoint_every_epochs = 1
  c.sample_latent_eval = True  # sample z at evaluation, as the paper does
  c.eval_sample_captions = 4  # a grid for this many test captions at each eval (0 = none)
  # The in-loop judge (t2i_jax.train.judge): at each eval, score one sample for each of
  # this many captions per split with the dataset's evaluator, as `t2i evaluate --num N
  # --seeds 1` does (0 = off). The losses do not rank runs; this does.
  c.judge_num = 0
  c.log_every_steps = 1000  # 0 = only per epoch
  c.checkpoint_every_steps = 5000  # 0 = only at epoch ends and at the end
  c.keep_checkpoints = 3
  # A NaN/Inf loss or gradient: 'stop' (name the step and the last checkpoint) or 'skip'
  # (discard that update, count it in the metrics as skipped_steps, go on).
  c.nonfinite = "stop"
  # Generic to every family (t2i_jax.train): an EMA of the params, used for eval and
  # sampling when on, and frozen params from another run (a first stage).
  c.ema_decay = 0.0  # 0 = off; e.g. 0.999
  c.first_stage_workdir = ""  # workdir of a trained first stage (latent families)
  # Flow family (t2i_jax.methods.flow): caption dropout for classifier-free guidance and
  # the defaults of t2i sample / evaluate.
  c.cfg_drop_rate = 0.1
  # Objective options (t2i_jax.methods.flow; 0 = off): contrastive flow matching's lambda,
  # and model guidance's w (the model learns the guided field at scale 1 / (1 - w)).
  c.contrastive_weight = 0.0
  c.model_guidance = 0.0
  c.sample_steps = 20
  c.sample_guidance = 3.0
  c.sample_solver = "euler"  # euler | heun
  # Guidance applies only at steps whose t lies in [lo, hi] (t = 1 is noise); elsewhere the
  # conditional model alone (Kynkaanniemi et al. 2024). (0, 1) = every step.
  c.sample_guidance_interval = (0.0, 1.0)
  # The solver's time grid: t = s u / (1 + (s - 1) u) on uniform u (SD3's shift); s > 1
  # puts more steps near the noise end. 1 = uniform.
  c.sample_time_shift = 1.0
  return c


def paper_config(model: str, learning_rate: float) -> ml_collections.ConfigDict:
  """The paper's setup (SEED.md) for ``model``, shared by experiments.model1-3.

  Flickr8k with the paper's caption-#4 split and preprocessing, sums of GloVe 6B 50d
  vectors of stopword-free captions, batch 1, Keras RMSprop, 15 epochs, and z sampled at
  evaluation too.
  """
  c = base_config()
  c.dataset = "flickr8k"
  c.image_mode = "paper"
  c.split_scheme = "paper"
  c.glove = ""  # GloVe 6B 50d
  c.caption_mode = "sum"
  c.remove_stopwords = True
  c.model = model
  c.kl_weight = 1.0
  c.optimizer = "rmsprop"
  c.learning_rate = learning_rate
  c.batch_size = 1
  c.num_epochs = 15
  c.sample_latent_eval = True
  c.steps_per_scan = 256  # batch 1 is dispatch-bound: one jitted call runs 256 steps
  c.eval_batch_size = 256
  c.log_every_steps = 2048
  c.checkpoint_every_steps = 8192
  return c


def cvae_config(dataset: str = "shapes") -> ml_collections.ConfigDict:
  """The caption-following CVAE (``t2i_jax.models.cvae``), shared by experiments.cvae_*.

  Word sequences with stopwords kept (they carry the relations: "left of", "above"), the
  'cvae' loss (per-dimension MSE + beta * KL to the learned prior, KL warm-up, free bits)
  and Adam at batch 64; experiments set the size of the model and the length of the run.
  """
  c = base_config()
  c.dataset = dataset
  c.caption_mode = "sequence"
  c.max_caption_len = 24  # the longest shapes caption has 24 words: none is cut
  c.remove_stopwords = False
  c.model = "cvae"
  c.model_kwargs = ml_collections.ConfigDict({"max_len": 24})
  # kl_weight = 2 sigma^2 (losses.cvae_loss): sigma 0.5. In 900-step shapes runs, 0.5 put
  # stated positions in the right cell more often than 0.05 (sigma 0.16), whose z carried
  # 57 nats against 17 and whose prior samples ignored "top left"; all 32 latent dims
  # stayed active at 0.5, so free bits are off (raise them if active_dims drops).
  c.kl_weight = 0.5
  c.kl_warmup_steps = 1000
  c.free_bits = 0.0
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.batch_size = 64
  # XLA:CPU trains a conv net ~10x slower inside a scan (train._train_chunk); on a GPU
  # --config.steps_per_scan=16 saves dispatches (it is a resumable key).
  c.steps_per_scan = 1
  c.eval_batch_size = 250
  c.log_every_steps = 200
  c.checkpoint_every_steps = 1000
  return c


# The data keys a multi-stage config shares between its stages (t2i_jax.train.stages).
DATA_KEYS = ("dataset", "data_dir", "manual_dir", "image_mode", "folder_test_fraction",
             "split_scheme", "glove", "caption_mode", "max_caption_len", "remove_stopwords",
             "caption_dtype", "num_images", "shapes_seed", "seed")


def flow_config(dataset: str = "shapes") -> ml_collections.ConfigDict:
  """The two-stage latent flow family (``t2i_jax.methods.latent_ae`` + ``methods.flow``).

  Stage 1 is an image VAE trained with the paper's kind of loss (MSE + KL); stage 2 a
  text-conditioned rectified flow in its frozen latent, reading word sequences (stopwords
  kept: they carry the relations) through cross-attention, with 10% caption dropout for
  classifier-free guidance and an EMA of its params. Experiments set the sizes and lengths.
  Top-level keys are the data, shared by both stages; ``stage1`` / ``stage2`` hold the rest.
  """
  shared = base_config()
  shared.dataset = dataset
  shared.caption_mode = "sequence"
  shared.max_caption_len = 24  # the longest shapes caption has 24 words: none is cut
  shared.remove_stopwords = False
  c = ml_collections.ConfigDict({k: shared[k] for k in DATA_KEYS})
  c.stages = ("stage1", "stage2")
  ae = {"channels": (128,), "latent_channels": 4, "num_res": 1, "patch": 4}

  s1 = ml_collections.ConfigDict(shared.to_dict())
  s1.model = "latent_ae"
  s1.model_kwargs = ml_collections.ConfigDict({"ae": ae})
  s1.kl_weight = 1e-4  # per latent dimension (methods.latent_ae): keeps small shapes sharp
  s1.optimizer = "adam"
  s1.learning_rate = 2e-3
  s1.warmup_steps = 100
  s1.batch_size = 64
  s1.steps_per_scan = 1  # XLA:CPU runs conv gradients ~10x slower inside a scan
  s1.eval_batch_size = 250
  s1.log_every_steps = 100
  s1.checkpoint_every_steps = 500
  s1.eval_sample_captions = 0  # an autoencoder draws nothing from captions

  s2 = ml_collections.ConfigDict(shared.to_dict())
  s2.model = "flow"
  # 16 tokens of width 128: far more steps per minute than 64 tokens of width 192
  # (CPU_NOTES). Narrower is not better: on shapes, width 96 for 1.7x the steps in the
  # same time follows captions worse (README, "Results: built-in shapes (flow)").
  # Two self-attention layers over the words before cross-attention.
  s2.model_kwargs = ml_collections.ConfigDict({
      "ae": ae, "patch": 4, "width": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 4,
      "text_layers": 2, "text_heads": 4, "max_len": 24})
  s2.optimizer = "adamw"
  s2.optimizer_kwargs = ml_collections.ConfigDict({"b2": 0.99})
  s2.learning_rate = 1e-3
  s2.warmup_steps = 200
  s2.grad_clip_norm = 1.0
  s2.batch_size = 128
  s2.ema_decay = 0.999
  s2.cfg_drop_rate = 0.1
  # Several steps per jitted loop: the transformer (no convs) trains ~20% faster per step
  # inside the loop than one step per call (flow_shapes' step at batch 128: 223-236 ms at
  # 2, 4, 8 or 16 steps per call against 285 ms at 1; 2-core AMD EPYC VM, interleaved).
  s2.steps_per_scan = 4
  s2.eval_batch_size = 250
  s2.log_every_steps = 200
  s2.checkpoint_every_steps = 1000
  c.stage1 = s1
  c.stage2 = s2
  return c


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(_flat_keys(v, prefix + k + "."))
  return keys


def _literal(text: str) -> Any:
  """A Python literal if ``text`` is one, else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _parse_scalar(kind: type, text: str) -> Any:
  if kind is bool:
    low = text.strip().lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(text)
  if kind is int:
    try:
      return int(text.strip().replace("_", ""))
    except ValueError:
      f = float(text)  # accepts 1e5
      if not f.is_integer():
        raise
      return int(f)
  if kind is float:
    return float(text)
  if kind is str:
    return text
  raise ValueError(text)


def _coerce_scalar(kind: type, value: Any) -> Any:
  """An element already parsed by literal_eval, checked against ``kind``."""
  if isinstance(value, str):
    return _parse_scalar(kind, value)
  if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  if kind is int and isinstance(value, int) and not isinstance(value, bool):
    return value
  if kind is bool and isinstance(value, bool):
    return value
  if kind is str:
    return str(value)
  raise ValueError(repr(value))


def _coerce_like(example: Any, value: Any) -> Any:
  """``value`` (parsed by literal_eval) checked and converted to the type of ``example``.

  Sequences nest: a homogeneous sequence converts every item like its first item; a mixed
  one, such as a ("model1", 64, 16) row, converts position by position.
  """
  if isinstance(example, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      raise ValueError(repr(value))
    if example and len({type(x) for x in example}) > 1:
      if len(value) != len(example):
        raise ValueError(repr(value))
      items = [_coerce_like(e, v) for e, v in zip(example, value)]
    elif example:
      items = [_coerce_like(example[0], v) for v in value]
    else:
      items = list(value)
    return tuple(items) if isinstance(example, tuple) else items
  return _coerce_scalar(type(example), value)


def _parse_sequence(current: Sequence[Any], text: str) -> tuple | list:
  stripped = text.strip()
  if stripped[:1] in "([":
    items = ast.literal_eval(stripped)
    if not isinstance(items, (list, tuple)):
      raise ValueError(text)
  elif not stripped:
    items = []
  else:
    items = [_literal(s.strip()) for s in stripped.split(",") if s.strip()]
  return _coerce_like(current, items)


def parse_value(current: Any, text: str) -> Any:
  """``text`` parsed as the type of ``current``; ValueError when it is not one."""
  if isinstance(current, bool):
    return _parse_scalar(bool, text)
  if isinstance(current, (int, float, str)):
    return _parse_scalar(type(current), text)
  if isinstance(current, (tuple, list)):
    return _parse_sequence(current, text)
  if isinstance(current, (dict, ml_collections.ConfigDict)):
    value = ast.literal_eval(text)
    if not isinstance(value, dict):
      raise ValueError(text)
    return ml_collections.ConfigDict(value)
  return _literal(text)  # None or another type: best effort


def _type_name(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    inner = f" of {type(value[0]).__name__}" if value else ""
    return f"{type(value).__name__}{inner} (comma-separated)"
  if isinstance(value, bool):
    return "bool (true/false/1/0)"
  if isinstance(value, ml_collections.ConfigDict):
    return "dict"
  return type(value).__name__


def _split_overrides(argv: Iterable[str]) -> list[tuple[str, str]]:
  argv = list(argv)
  out = []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if not arg.startswith(_PREFIX):
      raise UserError(f"Unexpected argument {arg!r}; overrides look like --config.key=value.")
    body = arg[len(_PREFIX):]
    if "=" in body:
      key, value = body.split("=", 1)
    else:
      if i + 1 >= len(argv):
        raise UserError(f"{arg} needs a value: {arg}=VALUE or {arg} VALUE.")
      key, value = body, argv[i + 1]
      i += 1
    if not key:
      raise UserError(f"Empty config key in {arg!r}; write --config.key=value.")
    out.append((key, value))
    i += 1
  return out


def apply_overrides(config: ml_collections.ConfigDict,
                    argv: Iterable[str]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``--config.a.b=value`` / ``--config.a.b value`` applied.

  The value's type is the existing field's (bool accepts true/false/1/0, sequences accept
  ``1,2`` or a Python literal). Unknown keys and unparsable values raise a UserError that
  names the key; keys inside OPEN_DICTS may be added (their value is a Python literal).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  shared = shared_stage_keys(config)
  for key, text in _split_overrides(argv):
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in config.get("stages", ()) and parts[1] in shared:
      # train.stages would overwrite it with the top-level value: refuse, not ignore.
      raise UserError(f"--config.{key}: {parts[1]} is shared by every stage (the top-level "
                      f"value replaces each stage's); set --config.{parts[1]}={text} instead.")
    node = config
    for depth, part in enumerate(parts[:-1]):
      child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
      if not isinstance(child, ml_collections.ConfigDict):
        _unknown_key(config, ".".join(parts[:depth + 1]))
      node = child
    leaf = parts[-1]
    if leaf not in node:
      if len(parts) >= 2 and parts[-2] in OPEN_DICTS:
        node[leaf] = _literal(text)
        continue
      _unknown_key(config, key)
    current = node[leaf]
    try:
      value = parse_value(current, text)
    except (ValueError, SyntaxError, TypeError):
      raise UserError(f"--config.{key}: expected {_type_name(current)}, got {text!r}.") from None
    # Replace rather than assign through the field so a dict/None field can change type.
    del node[leaf]
    node[leaf] = value
  return config


def shared_stage_keys(config: ml_collections.ConfigDict) -> list[str]:
  """The keys a multi-stage config shares (``train.stages``): every plain top-level value,
  e.g. the data and the seed; [] for a one-stage config."""
  if "stages" not in config:
    return []
  return [k for k in config.keys()
          if k != "stages" and not isinstance(config[k], ml_collections.ConfigDict)]


def _unknown_key(config: ml_collections.ConfigDict, key: str) -> None:
  known = _flat_keys(config)
  close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise UserError(f"Unknown config key {key!r}.{hint} Known keys: {', '.join(known)}.")


def load_config_module(path_or_module_name: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a module given as a file path or a dotted module name."""
  name = str(path_or_module_name)
  try:
    if name.endswith(".py") or Path(name).is_file():
      path = Path(name)
      if not path.is_file():
        raise UserError(f"Config file {name} does not exist.")
      spec = importlib.util.spec_from_file_location(f"_t2i_config_{path.stem}", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
    else:
      module = importlib.import_module(name)
  except ModuleNotFoundError as e:
    raise UserError(f"Cannot import config module {name!r} ({e}); give a path to a .py "
                    "file or a module name such as experiments.model1.") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"Config module {name!r} has no get_config() function.")
  return module.get_config()


def to_json_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Plain JSON-safe dict of ``config`` (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def _tuplify(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuplify(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuplify(v) for v in value)
  return value


def complete(config) -> ml_collections.ConfigDict:
  """``config`` (a ConfigDict or dict, possibly partial) with every missing key at its
  ``base_config`` default: the one place defaults live."""
  data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  if set(data) >= set(base_config().keys()):
    return config if isinstance(config, ml_collections.ConfigDict) else (
        ml_collections.ConfigDict(data))
  merged = base_config().to_dict()
  merged.update(data)
  return ml_collections.ConfigDict(merged)


def from_json_dict(data: dict[str, Any]) -> ml_collections.ConfigDict:
  """Inverse of ``to_json_dict``: JSON has no tuples, and configs use tuples for sequences.

  A key added to ``base_config`` after a run was saved takes its default, so code reading
  an old run's config never needs a fallback of its own.
  """
  return complete(_tuplify(data))
