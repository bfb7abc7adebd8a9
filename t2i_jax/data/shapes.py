"""Captioned shapes: a procedural dataset whose captions can be checked exactly.

Real caption datasets cannot tell us whether a generated image follows its caption. Here
every 64x64 scene is drawn from a known list of objects, so a classifier that reads the
generated image back (shape, colour, size per cell, background) scores caption following
exactly. Pure numpy + PIL, no download, and scene ``i`` of a split is a pure function of
``(seed, split, i)`` so generation can be sharded and resumed.

Scenes: one or two objects on a dark background; each object has a shape, a colour, a size
and a cell of the 3x3 grid (row-major, cell = 3 * row + col, row 0 at the top). Two
objects never share a cell, and an object always fits inside its cell.

Ground-truth attributes (``scene_attributes``), int32 arrays indexed by cell:
  * ``present`` [9]: 1 where the cell holds an object, else 0.
  * ``shape``, ``colour``, ``size`` [9]: ids into SHAPES, COLOURS, SIZES; -1 for an empty
    cell.
  * ``background`` []: id into BACKGROUNDS.
A reader of generated images should predict the same dict (``-1``s for cells it finds
empty); ``t2i_jax.evals.shapes.caption_is_satisfied`` and the scoring helpers take it.

Stated record: every caption comes with an int32 array of length STATED_LEN saying what it
claims, -1 meaning "not stated":
  * ``[0]`` background id, ``[1]`` object count ("two shapes", "a single ..."),
    ``[2]`` relation id (RELATIONS) meaning "mention 0 <relation> mention 1".
  * ``[3:7]`` mention 0 and ``[7:11]`` mention 1, each (shape, colour, size, cell). Every
    mention states shape and colour; size and cell may be -1. An unused mention is all -1.
Mentions are object descriptions, not cells: "a red circle above a blue square" states two
mentions without cells plus a relation. A caption is satisfied by predicted attributes
(``t2i_jax.evals.shapes``) when the stated background and count match and the mentions can
be assigned to *distinct* present cells that match every stated field of their mention (and
the relation, if any, holds between the two cells). Relations compare grid rows/columns
strictly: "left of" means a smaller column, "above" a smaller row; the other axis is free.

Splits (``split_sizes``): ``train`` 90%, ``test`` 5%, ``compositional`` 5% of
``num_images`` (20,000 by default). HELD_OUT lists 7 of the 40 colour-shape pairs (17.5%;
every colour and shape still occurs in training); train and test never contain a held-out
pair, and every compositional scene contains at least one.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_SCALE = 4  # draw at 4x, then box-filter down: exact area anti-aliasing
_HI = IMAGE_SIZE * _SCALE
_CELL = IMAGE_SIZE / 3  # 21.33 px

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "pink")
SIZES = ("small", "big")
CELLS = ("top left", "top", "top right", "left", "centre", "right", "bottom left",
         "bottom", "bottom right")
BACKGROUNDS = ("black", "gray", "navy", "brown")
RELATIONS = ("left of", "right of", "above", "below")
SPLITS = ("train", "test", "compositional")
NUM_CELLS = 9
MAX_OBJECTS = 2
CAPTIONS_PER_IMAGE = 5

# Saturated object colours against dark, muted backgrounds: every object colour stays
# far from every background colour, so any pairing reads clearly.
COLOUR_RGB = {
    "red": (230, 30, 30), "green": (40, 200, 50), "blue": (50, 110, 255),
    "yellow": (250, 230, 40), "purple": (170, 60, 230), "orange": (255, 140, 0),
    "white": (245, 245, 245), "pink": (255, 120, 190),
}
BACKGROUND_RGB = {
    "black": (0, 0, 0), "gray": (95, 95, 95), "navy": (10, 15, 70), "brown": (85, 50, 20),
}
# Side of the object's bounding square, in output pixels, sampled uniformly in range.
SIZE_PX = {"small": (9.0, 11.0), "big": (18.0, 20.0)}

# Held-out (shape, colour) pairs: each colour at most once, each shape at most twice.
HELD_OUT = (("circle", "green"), ("circle", "pink"), ("square", "orange"),
            ("triangle", "blue"), ("triangle", "purple"), ("diamond", "red"),
            ("cross", "white"))
_HELD_OUT_SET = frozenset(HELD_OUT)
_ALL_PAIRS = tuple(itertools.product(SHAPES, COLOURS))
_SEEN_PAIRS = tuple(p for p in _ALL_PAIRS if p not in _HELD_OUT_SET)

STATED_LEN = 3 + 4 * MAX_OBJECTS
# Slots of the stated record: background, count, relation, first mention.
STATED_BG, STATED_COUNT, STATED_REL, STATED_M0 = 0, 1, 2, 3

# Caption vocabulary. Every word is in GloVe 6B (tests/test_shapes.py checks).
_SHAPE_WORDS = {
    "circle": ("circle", "circle", "disk"), "square": ("square",),
    "triangle": ("triangle",), "diamond": ("diamond", "diamond", "rhombus"),
    "cross": ("cross", "cross", "plus sign"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "big": ("big", "large")}
_BG_WORDS = {"black": ("black",), "gray": ("gray", "grey"), "navy": ("navy",),
             "brown": ("brown",)}
_CELL_PHRASES = (
    ("in the top left corner", "at the top left", "in the upper left corner",
     "at the upper left", "in the top left"),
    ("at the top", "at the top centre", "at the top center", "in the top middle",
     "at the top of the image"),
    ("in the top right corner", "at the top right", "in the upper right corner",
     "at the upper right", "in the top right"),
    ("on the left", "on the left side", "at the left edge", "on the left side of the image",
     "on the left side of the picture"),
    ("in the centre", "in the center", "in the middle", "at the centre of the image",
     "in the middle of the picture"),
    ("on the right", "on the right side", "at the right edge",
     "on the right side of the image", "on the right side of the picture"),
    ("in the bottom left corner", "at the bottom left", "in the lower left corner",
     "at the lower left", "in the bottom left"),
    ("at the bottom", "at the bottom centre", "at the bottom center",
     "in the bottom middle", "at the bottom of the image"),
    ("in the bottom right corner", "at the bottom right", "in the lower right corner",
     "at the lower right", "in the bottom right"),
)
_REL_PHRASES = (
    ("to the left of", "left of"),
    ("to the right of", "right of"),
    ("above", "over"),
    ("below", "under", "beneath", "underneath"),
)
_BG_PHRASES = ("on {a} {bg} background", "against {a} {bg} background",
               "with {a} {bg} background")


@dataclasses.dataclass(frozen=True)
class Obj:
  """One object: names from SHAPES, COLOURS, SIZES and a cell index into CELLS."""

  shape: str
  colour: str
  size: str
  cell: int


@dataclasses.dataclass(frozen=True)
class Scene:
  """A background name from BACKGROUNDS and one or two objects in distinct cells."""

  background: str
  objects: tuple[Obj, ...]


def split_sizes(num_images: int) -> dict[str, int]:
  """Images per split: 5% test, 5% compositional (rounded down), the rest train."""
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}")
  held = num_images * 5 // 100
  return {"train": num_images - 2 * held, "test": held, "compositional": held}


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator for scene ``index`` of ``split``: independent of every other scene."""
  return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def sample_scene(rng: np.random.Generator, split: str) -> Scene:
  """Samples one scene; colour-shape pairs obey the split's held-out rule."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
  num = int(rng.integers(1, MAX_OBJECTS + 1))
  cells = rng.choice(NUM_CELLS, size=num, replace=False)
  pairs: list[tuple[str, str]] = []
  # In the compositional split one object (chosen at random) carries a held-out pair.
  forced = int(rng.integers(num)) if split == "compositional" else -1
  for k in range(num):
    if k == forced:
      pool = HELD_OUT
    elif split == "compositional":
      pool = _ALL_PAIRS
    else:
      pool = _SEEN_PAIRS
    while True:  # two identical shape+colour objects would make captions ambiguous
      pair = pool[int(rng.integers(len(pool)))]
      if pair not in pairs:
        break
    pairs.append(pair)
  objects = tuple(
      Obj(shape=s, colour=c, size=SIZES[int(rng.integers(len(SIZES)))], cell=int(cell))
      for (s, c), cell in zip(pairs, cells))
  background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
  return Scene(background=background, objects=objects)


def _object_geometry(obj: Obj, rng: np.random.Generator) -> tuple[float, float, float]:
  """Centre (x, y) and side in output pixels, jittered but inside the object's cell."""
  lo, hi = SIZE_PX[obj.size]
  side = float(rng.uniform(lo, hi))
  slack = max(0.0, (_CELL - side) / 2 - 0.5)
  row, col = divmod(obj.cell, 3)
  cx = (col + 0.5) * _CELL + float(rng.uniform(-slack, slack))
  cy = (row + 0.5) * _CELL + float(rng.uniform(-slack, slack))
  return cx, cy, side


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float,
          fill: tuple[int, int, int]) -> None:
  """Draws one shape at 4x; coordinates come in output pixels."""
  s = _SCALE
  # PIL fills the closed pixel range [x0, x1]; trim one hi-res pixel to stay in the box.
  x0, x1 = (cx - side / 2) * s, (cx + side / 2) * s - 1
  y0, y1 = (cy - side / 2) * s, (cy + side / 2) * s - 1
  mx, my = (x0 + x1) / 2, (y0 + y1) / 2
  if shape == "circle":
    draw.ellipse((x0, y0, x1, y1), fill=fill)
  elif shape == "square":
    draw.rectangle((x0, y0, x1, y1), fill=fill)
  elif shape == "triangle":
    draw.polygon([(mx, y0), (x1, y1), (x0, y1)], fill=fill)
  elif shape == "diamond":
    draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=fill)
  elif shape == "cross":
    t = (x1 - x0) / 6  # arms one third of the side wide
    draw.rectangle((mx - t, y0, mx + t, y1), fill=fill)
    draw.rectangle((x0, my - t, x1, my + t), fill=fill)
  else:
    raise ValueError(f"Unknown shape {shape!r}; use one of {SHAPES}.")


def render(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
  """Renders a [64, 64, 3] uint8 image, anti-aliased by drawing at 4x and box-filtering.

  Size and position jitter come from ``rng``; without one they are seeded from the scene
  itself, so a scene always renders to the same bytes.
  """
  if rng is None:
    entropy = [BACKGROUNDS.index(scene.background)]
    for o in scene.objects:
      entropy += [SHAPES.index(o.shape), COLOURS.index(o.colour), SIZES.index(o.size), o.cell]
    rng = np.random.default_rng(entropy)
  img = Image.new("RGB", (_HI, _HI), BACKGROUND_RGB[scene.background])
  draw = ImageDraw.Draw(img)
  for obj in scene.objects:
    cx, cy, side = _object_geometry(obj, rng)
    _draw(draw, obj.shape, cx, cy, side, COLOUR_RGB[obj.colour])
  return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.uint8)


def scene_attributes(scene: Scene) -> dict[str, np.ndarray]:
  """The ground truth as fixed-size int32 arrays (layout in the module docstring)."""
  present = np.zeros((NUM_CELLS,), np.int32)
  shape = np.full((NUM_CELLS,), -1, np.int32)
  colour = np.full((NUM_CELLS,), -1, np.int32)
  size = np.full((NUM_CELLS,), -1, np.int32)
  for o in scene.objects:
    if present[o.cell]:
      raise ValueError(f"Two objects in cell {o.cell} ({CELLS[o.cell]}).")
    present[o.cell] = 1
    shape[o.cell] = SHAPES.index(o.shape)
    colour[o.cell] = COLOURS.index(o.colour)
    size[o.cell] = SIZES.index(o.size)
  return {"present": present, "shape": shape, "colour": colour, "size": size,
          "background": np.asarray(BACKGROUNDS.index(scene.background), np.int32)}


# ----------------------------------------------------------------------------- captions


def relations_between(cell_a: int, cell_b: int) -> list[int]:
  """Relation ids r with "object in cell_a <RELATIONS[r]> object in cell_b" true."""
  ra, ca = divmod(int(cell_a), 3)
  rb, cb = divmod(int(cell_b), 3)
  out = []
  if ca < cb:
    out.append(0)
  if ca > cb:
    out.append(1)
  if ra < rb:
    out.append(2)
  if ra > rb:
    out.append(3)
  return out


def _article(next_word: str) -> str:
  return "an" if next_word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


class _Caption:
  """Builds one caption's text and its stated record together, so they cannot drift."""

  def __init__(self):
    self.text = ""
    self.stated = np.full((STATED_LEN,), -1, np.int32)
    self._mentions = 0

  def obj(self, o: Obj, rng: np.random.Generator, size: bool | None = None,
          cell: bool = False, article: bool = True) -> str:
    """'a big red circle [in the top left]'; size None means include with p=0.6."""
    if size is None:
      size = bool(rng.random() < 0.6)
    m = STATED_M0 + 4 * self._mentions
    self._mentions += 1
    self.stated[m] = SHAPES.index(o.shape)
    self.stated[m + 1] = COLOURS.index(o.colour)
    words = [o.colour, _pick(rng, _SHAPE_WORDS[o.shape])]
    if size:
      self.stated[m + 2] = SIZES.index(o.size)
      words.insert(0, _pick(rng, _SIZE_WORDS[o.size]))
    if article:
      words.insert(0, _article(words[0]))
    if cell:
      self.stated[m + 3] = o.cell
      words.append(_pick(rng, _CELL_PHRASES[o.cell]))
    return " ".join(words)

  def cell(self, o: Obj, rng: np.random.Generator) -> str:
    """A position phrase for the most recent mention (which must be ``o``)."""
    self.stated[STATED_M0 + 4 * (self._mentions - 1) + 3] = o.cell
    return _pick(rng, _CELL_PHRASES[o.cell])

  def background(self, scene: Scene, rng: np.random.Generator, phrase: bool = True) -> str:
    self.stated[STATED_BG] = BACKGROUNDS.index(scene.background)
    bg = _pick(rng, _BG_WORDS[scene.background])
    if not phrase:
      return bg
    return _pick(rng, _BG_PHRASES).format(a=_article(bg), bg=bg)

  def relation(self, a: Obj, b: Obj, rng: np.random.Generator) -> str:
    """A relation phrase true for "mention 0 = a, mention 1 = b"."""
    rel = int(_pick(rng, relations_between(a.cell, b.cell)))
    self.stated[STATED_REL] = rel
    return _pick(rng, _REL_PHRASES[rel])

  def count(self, n: int) -> None:
    self.stated[STATED_COUNT] = n


def _single_caption(template: int, scene: Scene, rng: np.random.Generator) -> _Caption:
  o = scene.objects[0]
  c = _Caption()
  if template == 0:
    c.text = c.obj(o, rng, cell=True)
  elif template == 1:
    c.text = f"there is {c.obj(o, rng, cell=True)}"
  elif template == 2:
    c.text = f"{c.obj(o, rng, size=False, cell=True)} {c.background(scene, rng)}"
  elif template == 3:
    d = c.obj(o, rng, size=True)
    c.text = f"{c.cell(o, rng)} there is {d}"
  elif template == 4:
    c.text = f"{c.obj(o, rng, size=True)} {c.background(scene, rng)}"
  elif template == 5:
    c.count(1)
    c.text = f"a single {c.obj(o, rng, article=False, cell=True)}"
  elif template == 6:
    c.text = f"the image shows {c.obj(o, rng, cell=True)}"
  elif template == 7:
    bg = c.background(scene, rng, phrase=False)
    c.text = f"{_article(bg)} {bg} background with {c.obj(o, rng, cell=True)}"
  elif template == 8:
    d = c.obj(o, rng, size=True)
    c.text = f"{c.cell(o, rng)} is {d}"
  else:
    raise ValueError(template)
  return c


_NUM_SINGLE = 9


def _pair_caption(template: int, scene: Scene, rng: np.random.Generator) -> _Caption:
  """Templates 0-3 are relational; the rest list or mention the objects."""
  i = int(rng.integers(2))
  a, b = scene.objects[i], scene.objects[1 - i]
  c = _Caption()
  if template == 0:  # a red circle to the left of a blue square
    da, db = c.obj(a, rng), c.obj(b, rng)
    c.text = f"{da} {c.relation(a, b, rng)} {db}"
  elif template == 1:  # ... on a black background
    da, db = c.obj(a, rng), c.obj(b, rng)
    c.text = f"{da} {c.relation(a, b, rng)} {db} {c.background(scene, rng)}"
  elif template == 2:  # there is a big red circle above a small blue square
    da, db = c.obj(a, rng, size=True), c.obj(b, rng, size=True)
    c.text = f"there is {da} {c.relation(a, b, rng)} {db}"
  elif template == 3:  # a red circle in the top left and a blue square below it
    db = c.obj(b, rng)  # mention 0 = b, so that "b <rel> a" is what is stated
    da = c.obj(a, rng, cell=True)
    c.text = f"{da} and {db} {c.relation(b, a, rng)} it"
  elif template == 4:
    c.text = f"{c.obj(a, rng, cell=True)} and {c.obj(b, rng, cell=True)}"
  elif template == 5:
    c.count(2)
    noun = _pick(rng, ("shapes", "objects"))
    c.text = f"two {noun}, {c.obj(a, rng, cell=True)} and {c.obj(b, rng, cell=True)}"
  elif template == 6:
    c.text = f"{c.obj(a, rng, cell=True)}"
  elif template == 7:
    da, db = c.obj(a, rng, size=True), c.obj(b, rng, size=True)
    c.text = f"{da} and {db} {c.background(scene, rng)}"
  else:
    raise ValueError(template)
  return c


_NUM_PAIR, _NUM_PAIR_RELATIONAL = 8, 4


def make_captions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
  """Five (caption, stated record) pairs from distinct templates.

  Two-object scenes get two or three relational captions; one-object scenes get none.
  """
  if len(scene.objects) == 1:
    templates = rng.choice(_NUM_SINGLE, size=CAPTIONS_PER_IMAGE, replace=False)
    caps = [_single_caption(int(t), scene, rng) for t in templates]
  elif len(scene.objects) == 2:
    n_rel = int(rng.integers(2, 4))
    rel = rng.choice(_NUM_PAIR_RELATIONAL, size=n_rel, replace=False)
    other = rng.choice(np.arange(_NUM_PAIR_RELATIONAL, _NUM_PAIR),
                       size=CAPTIONS_PER_IMAGE - n_rel, replace=False)
    templates = rng.permutation(np.concatenate([rel, other]))
    caps = [_pair_caption(int(t), scene, rng) for t in templates]
  else:
    raise ValueError(f"Scenes hold 1 or {MAX_OBJECTS} objects, got {len(scene.objects)}.")
  return [(c.text, c.stated) for c in caps]


# ------------------------------------------------------------------------ stated records


def decode_stated(stated: np.ndarray) -> dict:
  """The stated record as names, for reading and debugging."""
  s = np.asarray(stated).reshape(-1)
  name = lambda table, i: None if i < 0 else table[int(i)]
  mentions = [{"shape": name(SHAPES, m[0]), "colour": name(COLOURS, m[1]),
               "size": name(SIZES, m[2]), "cell": name(CELLS, m[3])}
              for m in stated_mentions(s)]
  return {"background": name(BACKGROUNDS, s[STATED_BG]),
          "count": None if s[STATED_COUNT] < 0 else int(s[STATED_COUNT]),
          "relation": name(RELATIONS, s[STATED_REL]), "mentions": mentions}


def stated_mentions(stated: np.ndarray) -> list[np.ndarray]:
  """The used mentions of a stated record, each (shape, colour, size, cell) with -1s."""
  s = np.asarray(stated).reshape(-1)
  out = [s[STATED_M0 + 4 * k:STATED_M0 + 4 * k + 4] for k in range(MAX_OBJECTS)]
  return [m for m in out if not (m < 0).all()]


# --------------------------------------------------------------------------- generation


def generate_split(split: str, num_images: int = 20000, seed: int = 0, start: int = 0,
                   stop: int | None = None) -> Iterator[dict]:
  """Yields images ``start..stop`` of ``split``; each one depends only on (seed, split, i).

  Per image: ``image_id``, ``image`` [64, 64, 3] uint8, ``captions`` (5 str), ``stated``
  [5, STATED_LEN] int32, ``attributes`` (``scene_attributes``), ``scene`` (the Scene).
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
  n = split_sizes(num_images)[split]
  stop = n if stop is None else min(int(stop), n)
  if start < 0:
    raise ValueError(f"start must be >= 0, got {start}")
  for i in range(start, stop):
    rng = scene_rng(seed, split, i)
    scene = sample_scene(rng, split)
    image = render(scene, rng)
    caps = make_captions(scene, rng)
    yield {
        "image_id": f"shapes_{split}_{i:06d}",
        "image": image,
        "captions": [c for c, _ in caps],
        "stated": np.stack([s for _, s in caps]),
        "attributes": scene_attributes(scene),
        "scene": scene,
    }


# --------------------------------------------------------------------------- TFDS builder

_CHUNK = 64  # images per worker task: big enough to amortise IPC, small enough to stream
_POOL_MIN_IMAGES = 1000  # splits smaller than this render inline (see _iter_parallel)


def _render_chunk(args: tuple[str, int, int, int, int]) -> list[dict]:
  split, num_images, seed, start, stop = args
  out = []
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel
  for ex in generate_split(split, num_images, seed, start, stop):
    ex.pop("scene")
    ex["png"] = common.png_bytes(ex.pop("image"))  # encoded here, in the pool
    out.append(ex)
  return out


def _iter_parallel(split: str, num_images: int, seed: int, num_workers: int | None):
  """generate_split over a process pool, in order (so the output is deterministic)."""
  import multiprocessing  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  n = split_sizes(num_images)[split]
  tasks = [(split, num_images, seed, s, min(s + _CHUNK, n)) for s in range(0, n, _CHUNK)]
  workers = num_workers or os.cpu_count() or 1
  # A spawned pool takes ~1.8 s to start (each worker imports the main module), the time
  # of ~2,700 images inline: the small splits (the quickstart's 250 test and 250
  # compositional images) render inline.
  if workers <= 1 or len(tasks) <= 1 or (num_workers is None and n < _POOL_MIN_IMAGES):
    for t in tasks:
      yield from _render_chunk(t)
    return
  ctx = multiprocessing.get_context("spawn")  # TF/JAX are not fork-safe
  with ctx.Pool(workers) as pool:
    for chunk in pool.imap(_render_chunk, tasks):
      yield from chunk


def make_builder(spec, data_dir: str | None = None, num_images: int = 20000, seed: int = 0,
                 num_workers: int | None = None):
  """A TFDS builder for the shapes set with the caption tensors of ``spec``."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel

  glove = spec.load_glove()
  name = f"n{num_images}_seed{seed}_{spec.tag}"

  class Shapes(common.PrepareMessages, tfds.core.GeneratorBasedBuilder,
               skip_registration=True):
    """Captioned shapes: 64x64 scenes, five captions each, exact ground truth."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=(
        f"{num_images} images (seed {seed}); captions as GloVe {spec.mode} "
        f"({spec.glove_tag}, stopwords {'removed' if spec.remove_stopwords else 'kept'})"))]

    def _info(self):
      cells = lambda: tfds.features.Tensor(shape=(NUM_CELLS,), dtype=np.int32)
      extra = {"stated": tfds.features.Tensor(shape=(STATED_LEN,), dtype=np.int32),
               "attr_present": cells(), "attr_shape": cells(), "attr_colour": cells(),
               "attr_size": cells(), "attr_background": np.int32}
      return tfds.core.DatasetInfo(
          builder=self, description=__doc__.split("\n\n")[0],
          features=common.builder_features(spec, glove.dim, extra),
          metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
      del dl_manager
      self._stats = {}
      return {s: self._generate_examples(s) for s in SPLITS}

    def _generate_examples(self, split):
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      stats = common.CaptionStats()
      n = split_sizes(num_images)[split]
      for ex in tqdm(_iter_parallel(split, num_images, seed, num_workers), total=n,
                     desc=f"shapes/{split}", unit="img", mininterval=1.0):
        attrs = ex["attributes"]
        for k, caption in enumerate(ex["captions"]):
          values, st = spec.encode(glove, caption)
          stats += st
          yield f"{ex['image_id']}#{k}", {
              "image": ex["png"], "caption": caption, "image_id": ex["image_id"],
              "caption_index": k, "split": split, "stated": ex["stated"][k],
              "attr_present": attrs["present"], "attr_shape": attrs["shape"],
              "attr_colour": attrs["colour"], "attr_size": attrs["size"],
              "attr_background": attrs["background"], **values}
      self._stats[split] = stats
      total = common.CaptionStats()
      for s in self._stats.values():
        total += s
      self.info.metadata.update({
          **common.caption_metadata(spec, glove.dim, total), "num_images": num_images,
          "seed": seed, "images_present": num_images, "split_images": split_sizes(num_images)})

  return Shapes(config=name, data_dir=data_dir)
