"""``t2i evaluate``: caption-following and image-quality metrics of a trained run.

Every number is an entry ``{"name", "split", "model", "n", "mean", "std", "seeds", ...}``:
``n`` is what the number averages over (captions, stated attributes, cells), ``mean`` and
``std`` are over ``seeds`` generation seeds (sample std; 0 for deterministic sources, which
have ``seeds: 1``), except R-precision, whose ``std`` is over its 10 folds as in AttnGAN
(``std_over`` says which). Each metric is computed for the run's model and, through the
very same code, for baselines: ``real`` (the dataset's own test images: the ceiling),
``mean_image`` (the mean training image for every caption), ``retrieval`` (the training
image whose caption tensor is nearest in cosine; sequence captions as the masked mean of
their word vectors) and, with ``--baseline-workdir``, a second run (e.g. a paper model).

Every dataset goes through one skeleton (``evaluate_dataset``): choose the scored pairs,
build the model and baseline sources, generate per seed, score, write the results and
grids. What is dataset-specific is an evaluator (``Evaluator``; in ``t2i_jax.evals``):

Shapes (``evals.shapes.ShapesEvaluator``): a scene reader (``evals.scene_reader``) reads
each image back; per stated attribute (``stated_accuracy/<attr>`` from
``evals.shapes.caption_checks``, ``n`` = how many captions state it) and
``all_stated_correct`` (``evals.shapes.caption_is_satisfied``, ``n`` = captions) on the
``test`` and ``compositional`` splits. ``reader_accuracy/<attr>`` is the reader against
the ground truth: on its own held-out renders (split ``reader_heldout``) and on the scored
real images (model ``real``, ``n`` = scored pairs).

Flickr8k (``evals.flickr8k.Flickr8kEvaluator``): a dual encoder (``evals.dual_encoder``)
trained on the official train split. ``r_precision``: R@1 of the true caption against 99 captions of other images (AttnGAN),
mean and std over 10 folds; ``FD_dual`` and ``KID_dual``: Fréchet distance and the kernel
inception distance estimator in the dual encoder's image-feature space (not Inception: no
FID). Pairs are those of the run's test split whose image is in the official test split,
so the dual encoder never trained on an evaluated image.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import ml_collections
import numpy as np

from t2i_jax.errors import UserError

DEFAULT_NUM = 1000
DEFAULT_SEEDS = 3
R_PRECISION_FOLDS = 10
R_PRECISION_DISTRACTORS = 99
GRID_ROWS = 8
SELECT_SEED = 0  # which pairs are scored and which distractors: the same for every model

# ------------------------------------------------------------------------------ entries


def entry(name: str, split: str, model: str, n: int, values: Sequence[float], *,
          std_over: str = "seeds", std: float | None = None, **extra) -> dict[str, Any]:
  """One result: mean of ``values`` (one per seed) and their sample std (0 for one value)."""
  v = np.asarray(values, np.float64)
  if std is None:
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
  out = {"name": name, "split": split, "model": model, "n": int(n), "mean": float(v.mean()),
         "std": float(std), "seeds": int(extra.pop("seeds", v.size)), "std_over": std_over}
  out.update(extra)
  return out


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
  """The entries as an aligned text table, one line each."""
  header = ("split", "model", "name", "n", "mean", "std", "seeds")
  num = lambda v: f"{v:.3e}" if 0 < abs(v) < 1e-2 else f"{v:.4f}"  # KID is often ~1e-4
  rows = [header] + [(r["split"], r["model"], r["name"], str(r["n"]), num(r["mean"]),
                      num(r["std"]), str(r["seeds"])) for r in results]
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))) for row in rows)


def format_pivot(results: Sequence[Mapping[str, Any]], *, markdown: bool = False,
                 names: Sequence[str] | None = None) -> str:
  """Models side by side: one row per (split, metric), one column per model.

  Each cell is ``mean ± std`` (the std over seeds, or over folds for R-precision; omitted
  when there is one value); ``n`` is the row's sample count. Reader self-checks (split
  ``reader_heldout``, names ``reader_accuracy/*``) are left out: they score the reader, not
  a model. ``names`` keeps only those metrics. ``markdown`` gives a GitHub table.
  """
  rows = [r for r in results if not str(r["name"]).startswith("reader_accuracy")
          and (names is None or r["name"] in names)]
  models = list(dict.fromkeys(r["model"] for r in rows))
  keys = list(dict.fromkeys((r["split"], r["name"]) for r in rows))
  cell = {(r["split"], r["name"], r["model"]): r for r in rows}
  def fmt(r):
    if r is None:
      return "-"
    small = 0 < abs(r["mean"]) < 1e-2  # KID and the like: significant digits
    num = (lambda v: f"{v:.3g}") if small else (lambda v: f"{v:.3f}")
    many = r["seeds"] > 1 or r.get("std_over") == "folds"
    return num(r["mean"]) + (f" ± {num(r['std'])}" if many else "")

  header = ["split", "metric", "n"] + models
  table = [header]
  for split, name in keys:
    present = [cell.get((split, name, m)) for m in models]
    n = next(r["n"] for r in present if r is not None)
    table.append([split, name, str(n)] + [fmt(r) for r in present])
  if markdown:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))) for row in table)


# ------------------------------------------------------------------------ metric functions


def r_precision_candidates(groups: np.ndarray, distractors: int = R_PRECISION_DISTRACTORS,
                           seed: int = SELECT_SEED) -> np.ndarray:
  """[N, 1 + k] caption indices: the true one first, then k captions of *other* images.

  ``groups[i]`` is the image of caption i (captions of one image never compete). k is
  ``distractors`` or fewer when the set is small (the same k for every row).
  """
  groups = np.asarray(groups)
  n = len(groups)
  others = [np.flatnonzero(groups != groups[i]) for i in range(n)]
  k = min([distractors] + [len(o) for o in others]) if n else 0
  if n and k < 1:
    raise UserError("R-precision needs captions of at least two different images.")
  rng = np.random.default_rng([seed, 0x4E5C])
  out = np.empty((n, 1 + k), np.int64)
  for i in range(n):
    out[i, 0] = i
    out[i, 1:] = rng.choice(others[i], size=k, replace=False)
  return out


def r_precision_hits(image_emb: np.ndarray, text_emb: np.ndarray,
                     candidates: np.ndarray) -> np.ndarray:
  """[N] bool: image i is more similar (cosine) to its caption than to every distractor."""
  img = _unit(image_emb)
  txt = _unit(text_emb)
  sims = np.einsum("nd,nkd->nk", img, txt[candidates])
  return sims[:, 0] > sims[:, 1:].max(axis=1)


def folds(values: np.ndarray, num_folds: int = R_PRECISION_FOLDS,
          seed: int = SELECT_SEED) -> np.ndarray:
  """Means of ``values`` over ``num_folds`` disjoint random folds (fewer if N is smaller)."""
  values = np.asarray(values, np.float64)
  k = max(1, min(num_folds, len(values)))
  order = np.random.default_rng([seed, 0xF01D]).permutation(len(values))
  return np.array([values[f].mean() for f in np.array_split(order, k)])


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets [N, D]."""
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or len(b) < 2:
    raise ValueError("the Fréchet distance needs at least two samples per set")
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  with warnings.catch_warnings():  # fewer samples than dimensions: singular, and said so
    warnings.simplefilter("ignore")
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():  # nudge both (as pytorch-fid does)
      eps = 1e-6 * np.eye(a.shape[1])
      covmean = scipy.linalg.sqrtm((s_a + eps) @ (s_b + eps))
  covmean = np.real(covmean)
  fd = float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))
  return max(fd, 0.0)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with KID's kernel k(u, v) = (u.v / d + 1)^3."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, n, d = len(x), len(y), x.shape[1]
  if m < 2 or n < 2:
    raise ValueError("KID needs at least two samples per set")
  kxx = (x @ x.T / d + 1) ** 3
  kyy = (y @ y.T / d + 1) ** 3
  kxy = (x @ y.T / d + 1) ** 3
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
               + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, subset_size: int = 1000, num_subsets: int = 50,
        seed: int = SELECT_SEED) -> float:
  """KID: the unbiased MMD^2 averaged over random subsets (the full sets when small)."""
  m = min(len(x), len(y), subset_size)
  if m >= len(x) and m >= len(y):
    return mmd2_unbiased(x, y)
  rng = np.random.default_rng([seed, 0x41D])
  return float(np.mean([mmd2_unbiased(x[rng.choice(len(x), m, replace=False)],
                                      y[rng.choice(len(y), m, replace=False)])
                        for _ in range(num_subsets)]))


def caption_vectors(text: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
  """Caption tensors -> one vector each: itself, or the masked mean of a sequence."""
  text = np.asarray(text, np.float32)
  if text.ndim == 2:
    return text
  if mask is None:
    raise ValueError("sequence caption tensors need their mask")
  m = np.asarray(mask, np.float32)[..., None]
  return (text * m).sum(1) / np.maximum(m.sum(1), 1.0)


def nearest_captions(query: np.ndarray, pool: np.ndarray, chunk: int = 256) -> np.ndarray:
  """For each query row, the index of the pool row of highest cosine similarity."""
  q, p = _unit(query).astype(np.float32), _unit(pool).astype(np.float32)
  return np.concatenate([np.argmax(q[s:s + chunk] @ p.T, axis=1)
                         for s in range(0, len(q), chunk)]) if len(q) else np.zeros(0, int)


# ------------------------------------------------------------------------------ sources


@dataclasses.dataclass
class Source:
  """Images for the scored captions: ``images(seed)`` -> uint8 [N, 64, 64, 3]."""

  name: str
  images: Callable[[int], np.ndarray]
  random: bool  # True: scored for every seed; False: once
  # A model's: (rows of the scored captions, n) -> uint8 [R, n, 64, 64, 3], n samples each.
  draw: Callable[[np.ndarray, int], np.ndarray] | None = None


# Seed of the extra samples drawn to measure a model's spread (Evaluator.spread).
SPREAD_SEED = 1000


def _model_source(name: str, gen, text: np.ndarray, options: Mapping[str, Any],
                  timing: dict[str, float] | None = None) -> Source:
  """The run's samples for ``text``; ``timing`` accumulates their count and wall time."""
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  cache: dict[int, np.ndarray] = {}

  def images(seed: int) -> np.ndarray:
    if seed not in cache:
      t0 = time.perf_counter()
      cache[seed] = sample.draw(gen.method, gen.params, gen.frozen, text, n=1, seed=seed,
                                options=options)[:, 0]
      if timing is not None:
        timing["images"] += len(text)
        timing["seconds"] += time.perf_counter() - t0
    return cache[seed]

  def draw(rows: np.ndarray, n: int) -> np.ndarray:
    # The seeds' images already drawn for these captions are the first of their n samples;
    # only the rest are new (seed SPREAD_SEED).
    drawn = [cache[seed][rows][:, None] for seed in sorted(cache)][:n]
    if len(drawn) < n:
      drawn.append(sample.draw(gen.method, gen.params, gen.frozen, text[rows], n=n - len(drawn),
                               seed=SPREAD_SEED, options=options))
    return np.concatenate(drawn, axis=1)

  return Source(name, images, random=True, draw=draw)


def _fixed_source(name: str, images: np.ndarray) -> Source:
  return Source(name, lambda seed: images, random=False)


def _baseline_text(gen, captions: Sequence[str]) -> np.ndarray:
  """``captions`` encoded as the baseline run's training encoded its captions.

  Its own caption spec and GloVe (a paper model sums stopword-free vectors where the CVAE
  reads sequences), from the raw strings, so the baseline may use another split scheme or
  image mode: only the captions have to be the same.
  """
  return np.stack([np.asarray(gen.spec.encode(gen.glove, str(c))[0]["caption_tensor"],
                              np.float32) for c in captions])


def _baseline_sources(train, mean_image: np.ndarray, baselines, idx_table, idx
                      ) -> list[Source]:
  """mean_image (uint8 [64, 64, 3], the same for every caption) and retrieval
  (deterministic), then each baseline run (random)."""
  sources = [_fixed_source("mean_image",
                           np.broadcast_to(mean_image, (len(idx),) + mean_image.shape))]
  query = caption_vectors(idx_table.text[idx], None if idx_table.mask is None else
                          idx_table.mask[idx])
  pool = caption_vectors(train.text, train.mask)
  nearest = nearest_captions(query, pool)
  sources.append(_fixed_source("retrieval", train.images[train.image_index[nearest]]))
  for baseline in baselines:
    sources.append(_model_source(baseline.name, baseline.gen,
                                 _baseline_text(baseline.gen, idx_table.captions[idx]),
                                 baseline.gen.default_options()))
  return sources


@dataclasses.dataclass
class _Baseline:
  gen: Any
  name: str

  @property
  def config(self):
    return self.gen.config


# ------------------------------------------------------------------------------- flows


def _override_data_dir(config, data_dir):
  if not data_dir:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.data_dir = str(data_dir)
  return config


def _subset(n_total: int, num: int | None) -> np.ndarray:
  """The scored pairs: the first ``num`` of a fixed random order (sorted), or all."""
  order = np.random.default_rng([SELECT_SEED, 0x5E1]).permutation(n_total)
  return np.sort(order[:num] if num else order)


def _grid(path: Path, captions: Sequence[str], columns: list[tuple[str, np.ndarray]]) -> Path:
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  rows = min(GRID_ROWS, len(captions))
  images = np.stack([c[1][:rows] for c in columns], axis=1)
  return sample.save_grid(images, [str(c) for c in captions[:rows]], path,
                          col_labels=[c[0] for c in columns])


def _grid_columns(sources: list[Source], real: np.ndarray, seeds: int
                  ) -> list[tuple[str, np.ndarray]]:
  cols = [("real", real)]
  for s in sources:
    if s.random:
      cols += [(f"{s.name} s{k}", s.images(k)) for k in range(min(seeds, 2))]
    else:
      cols.append((s.name, s.images(0)))
  return cols


class Evaluator(Protocol):
  """What one dataset plugs into ``evaluate_dataset`` (``t2i_jax.evals``).

  Calls, in order: ``setup`` once; per split ``eligible``, ``begin_split``, then per source
  ``score`` for each of its seeds and ``entries`` once; ``meta`` at the end.
  """

  dataset: str  # the prefix of the grid files and progress bars
  splits: tuple[str, ...]

  def setup(self, config) -> list[dict[str, Any]]:
    """Loads or trains the scoring network; entries that score it, if any."""

  def eligible(self, table) -> np.ndarray:
    """The pairs of a split that may be scored (``--num`` picks among them)."""

  def begin_split(self, split: str, table, idx: np.ndarray, real: np.ndarray
                  ) -> list[dict[str, Any]]:
    """Prepares the scored pairs ``idx`` of ``split``; entries on the real images."""

  def score(self, images: np.ndarray) -> Any:
    """One seed's images (row i made for pair idx[i]) -> its raw scores."""

  def entries(self, split: str, model: str, n: int, per_seed: list[Any]
              ) -> list[dict[str, Any]]:
    """A source's entries from its raw scores, one per seed."""

  def meta(self) -> dict[str, Any]:
    """What the report says about the scoring network."""

  # Optional: spread(split, model, draw) -> entries, where ``draw(rows, n)`` gives a
  # model's n samples for each of the scored captions ``rows`` (does it pick a layout?).


def scored_pairs(evaluator: Evaluator, table, num: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The pairs of ``table`` that a split scores (the first ``num`` eligible ones of a fixed
  random order, sorted; all with None) and their real images."""
  pool = evaluator.eligible(table)
  idx = pool[_subset(len(pool), num)]
  return idx, table.images[table.image_index[idx]]


def evaluate_dataset(evaluator: Evaluator, gen, *, config, num: int | None, seeds: int,
                     baselines=(), out_dir: Path, progress: bool = True,
                     options: Mapping[str, Any] | None = None) -> tuple[list[dict], dict]:
  """Scores the run's model, the baselines and the real images with ``evaluator``.

  Per split: the first ``num`` eligible pairs of a fixed random order, the same for every
  source; every random source is scored for ``seeds`` seeds, a deterministic one once; a
  grid of the first captions' images goes to ``out_dir/<dataset>_<split>.png``.
  ``options`` are the run's checked sampling options (default: the run's own).
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  results = list(evaluator.setup(config))
  timing = {"images": 0, "seconds": 0.0}
  train = pipeline.load_table(config, "train")
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  mean_image = np.round(sample.mean_image(train) * 255.0).astype(np.uint8)  # once, not per split
  pictures = []
  for split in evaluator.splits:
    table = pipeline.load_table(config, split)
    idx, real = scored_pairs(evaluator, table, num)
    if gen.method.GENERATES:
      sources = [_model_source(gen.config.model, gen, table.text[idx],
                               gen.default_options() if options is None else options,
                               timing)]
    else:  # a first stage: how well its reconstructions of the real images read
      sources = [_fixed_source(f"{gen.config.model}_reconstruction",
                               sample.reconstruct(gen, real))]
    sources += _baseline_sources(train, mean_image, baselines, table, idx)
    sources.append(_fixed_source("real", real))
    results += evaluator.begin_split(split, table, idx, real)
    for source in tqdm(sources, desc=f"{evaluator.dataset}/{split}", unit="model",
                       disable=not progress):
      per_seed = [evaluator.score(source.images(seed))
                  for seed in range(seeds if source.random else 1)]
      results += evaluator.entries(split, source.name, len(idx), per_seed)
      if source.draw is not None and hasattr(evaluator, "spread"):
        results += evaluator.spread(split, source.name, source.draw)
    path = out_dir / f"{evaluator.dataset}_{split}.png"
    _grid(path, table.captions[idx], _grid_columns(sources[:-1], real, seeds))
    pictures.append(str(path))
  generation = dict(timing, images_per_s=timing["images"] / max(timing["seconds"], 1e-9),
                    note="wall time of the run's own samples, compilation included")
  return results, {**evaluator.meta(), "pictures": pictures, "generation": generation}


def evaluator_for(dataset: str, reader=None, dual=None, progress: bool = True) -> Evaluator:
  """The dataset's evaluator (``t2i_jax.evals``); one line for a dataset without metrics."""
  # pylint: disable=import-outside-toplevel
  if dataset == "shapes":
    from t2i_jax.evals.shapes import ShapesEvaluator
    return ShapesEvaluator(reader=reader, progress=progress)
  if dataset == "flickr8k":
    from t2i_jax.evals.flickr8k import Flickr8kEvaluator
    return Flickr8kEvaluator(dual=dual, progress=progress)
  if dataset == "folder":
    from t2i_jax.evals.flickr8k import FolderEvaluator
    return FolderEvaluator(dual=dual, progress=progress)
  raise UserError(f"no metrics for dataset {dataset!r}; evaluate shapes, flickr8k or folder "
                  "runs.")


def _load_baselines(gen, workdirs, data_dir) -> list[_Baseline]:
  """The baseline runs (one workdir or several), each named by its model; a name that
  repeats the run's or an earlier baseline's gets a "baseline_" prefix and a number."""
  if not workdirs:
    return []
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  if isinstance(workdirs, (str, Path)):
    workdirs = [workdirs]
  names, out = {gen.config.model}, []
  for k, workdir in enumerate(workdirs):
    bgen = sample.load_generator(workdir)
    if bgen.config.dataset != gen.config.dataset:
      raise UserError(f"the baseline run {workdir} is on {bgen.config.dataset}, the run on "
                      f"{gen.config.dataset}; evaluate runs of the same dataset.")
    bgen = dataclasses.replace(bgen, config=_override_data_dir(bgen.config, data_dir))
    name = bgen.config.model
    if name in names:
      name = f"baseline_{name}" if f"baseline_{name}" not in names else f"baseline{k}_{name}"
    names.add(name)
    out.append(_Baseline(gen=bgen, name=name))
  return out


def evaluate_run(workdir: str | Path, *, out: str | Path | None = None,
                 num: int | None = DEFAULT_NUM, seeds: int = DEFAULT_SEEDS,
                 baseline_workdir: str | Path | Sequence[str | Path] | None = None,
                 data_dir: str | None = None, step: int | None = None,
                 reader=None, dual=None, progress: bool = True,
                 **options: Any) -> dict[str, Any]:
  """Scores the run in ``workdir``; writes the JSON (default W/eval/results.json) and grids.

  ``step`` scores a kept checkpoint other than the latest; its JSON and grids then go to
  W/eval/step_<step>/, beside the latest's.

  ``options`` are the family's sampling options (temperature, guidance, steps, ...; None or
  left out: the run's own); baselines sample at their own defaults.

  ``reader`` / ``dual`` replace the cached scene reader / dual encoder (tests pass tiny
  ones).
  """
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel
  if seeds < 1:
    raise UserError(f"--seeds must be at least 1, got {seeds}.")
  if num is not None and num < 1:
    raise UserError(f"--num must be at least 1, got {num}.")
  gen = sample.load_generator(workdir, generating=False, step=step)
  config = _override_data_dir(gen.config, data_dir)
  baselines = _load_baselines(gen, baseline_workdir, data_dir)
  common.host_only_tensorflow()
  out_dir = gen.workdir / "eval" / ("" if step is None else f"step_{step}")
  dataset = config.dataset
  options = sample.resolve_options(gen.method, gen.config, options) if gen.method.GENERATES else {}
  results, meta = evaluate_dataset(
      evaluator_for(dataset, reader=reader, dual=dual, progress=progress), gen, config=config,
      num=num, seeds=seeds, baselines=baselines, out_dir=out_dir, progress=progress,
      options=options)
  report = {
      "workdir": str(gen.workdir), "step": gen.step, "dataset": dataset,
      "model": gen.config.model, "seeds": seeds, "num": num, "options": options,
      "baseline_workdirs": [str(b.gen.workdir) for b in baselines],
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      **meta, "results": results,
  }
  path = Path(out).expanduser() if out else out_dir / "results.json"
  sample.atomic_save(lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"),
                     path)
  report["path"] = str(path)
  return report


def loss_metrics(workdir: str | Path, *, split: str = "test", data_dir: str | None = None,
                 batch_size: int | None = None, out: str | Path | None = None,
                 step: int | None = None, progress: bool = True) -> dict[str, Any]:
  """The run's in-loop metrics over a whole split, on its latest params (the EMA if kept).

  The same evaluator and key as the training loop's at that step (``in_loop_eval``), so on
  the test split at the run's own ``eval_batch_size`` it recomputes the last in-loop numbers
  (of a run on one device: a mesh pads the loop's batches to a multiple of its devices);
  a run trained before a metric existed (the flow family's ``caption_gain``) gets it too.
  Writes ``W/eval/loss_<split>.json`` (or ``out``; ``step``, a kept checkpoint other than
  the latest: ``loss_<split>_step<step>.json``); returns the report with its ``path``.
  """
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import common, pipeline  # pylint: disable=import-outside-toplevel
  from t2i_jax.train import in_loop_eval  # pylint: disable=import-outside-toplevel
  gen = sample.load_generator(workdir, generating=False, step=step)
  config = _override_data_dir(gen.config, data_dir)
  size = int(config.eval_batch_size if batch_size is None else batch_size)
  if size < 1:
    raise UserError(f"--batch-size must be at least 1, got {size}.")
  common.host_only_tensorflow()
  table = pipeline.load_table(config, split)
  eval_step = in_loop_eval.make_eval_step(config, gen.frozen, method=gen.method)
  metrics = in_loop_eval.evaluate(eval_step, gen.params, table, batch_size=size,
                                  rng=in_loop_eval.eval_key(config.seed, gen.step),
                                  desc=f"{split} loss", progress=progress)
  report = {"workdir": str(gen.workdir), "step": gen.step, "split": split,
            "model": gen.config.model, "batch_size": size, "metrics": metrics}
  path = Path(out).expanduser() if out else gen.workdir / "eval" / (
      f"loss_{split}.json" if step is None else f"loss_{split}_step{step}.json")
  sample.atomic_save(lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"),
                     path)
  report["path"] = str(path)
  return report


__all__ = [
    "Evaluator", "caption_vectors", "entry", "evaluate_dataset", "evaluate_run",
    "evaluator_for", "folds",
    "format_pivot", "format_table", "frechet_distance", "kid", "loss_metrics", "mmd2_unbiased",
    "nearest_captions", "r_precision_candidates", "r_precision_hits", "scored_pairs",
]
