"""`t2i prepare folder`: your own images and captions, prepared, trained on, sampled, scored.

One small folder (nested jpg, png and webp images) in both caption formats, with every bad
case: a missing image, a corrupt one, an oversized one, an empty caption, a name that is no
image, an image without caption, macOS junk; plus the malformed files and the split rule.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import flickr8k_fixtures as fx
from t2i_jax import cli, evaluate, train
from t2i_jax.data import folder, integrity, pipeline
from tiny_runs import tiny_config

TEST_FRACTION = 0.25
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (230, 220, 30), "white": (245, 245, 245), "black": (10, 10, 10)}
# (path under images/, format, colour, size): nested folders, three formats, odd sizes.
GOOD = [(f"{sub}{c}_{i}.{ext}", fmt, c, size)
        for i, (sub, ext, fmt, size) in enumerate([
            ("", "jpg", "JPEG", (80, 64)), ("animals/", "png", "PNG", (64, 96)),
            ("animals/cats/", "webp", "WEBP", (70, 70)), ("trips/2019/", "jpeg", "JPEG", (120, 40))])
        for c in COLOURS]
MISSING = "trips/gone.jpg"  # named by captions, no such file
NOT_AN_IMAGE = "notes.txt"  # named by a caption, not an image file name
CORRUPT = "animals/broken.jpg"  # a truncated JPEG
OVERSIZED = "big.png"  # a header claiming 8000x8000 (64 Mpx, over the 40 Mpx limit)
UNCAPTIONED = "spare.jpg"  # an image no caption names


def captions_of(path: str) -> list[str]:
  colour = path.rsplit("/", 1)[-1].split("_")[0]
  return [f"A {colour} square , on a plain background", f'The "{colour}" one, bright and flat']


def _rows() -> list[tuple[str, str]]:
  rows = []
  for path, _, _, _ in GOOD:
    rows += [(path, c) for c in captions_of(path)]
  rows.insert(3, (GOOD[1][0], ""))  # an empty caption
  rows += [(MISSING, "a lost photo"), (MISSING, "still lost"), (NOT_AN_IMAGE, "some notes"),
           (CORRUPT, "a broken file"), (OVERSIZED, "a huge red square")]
  return rows


def make_folder(root: Path, fmt: str = "csv", images=GOOD) -> Path:
  """The captioned folder under ``root``, captions as captions.csv or captions.jsonl."""
  img_dir = root / "images"
  for path, ext, colour, size in images:
    (img_dir / path).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLOURS[colour]).save(img_dir / path, format=ext)
  buf = io.BytesIO()
  Image.new("RGB", (64, 48), (90, 90, 90)).save(buf, format="JPEG")
  (img_dir / CORRUPT).parent.mkdir(parents=True, exist_ok=True)
  (img_dir / CORRUPT).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  (img_dir / OVERSIZED).write_bytes(fx.png_header_bomb(8000, 8000))
  Image.new("RGB", (64, 64)).save(img_dir / UNCAPTIONED)
  (img_dir / "._red_0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS junk")
  if fmt == "csv":
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f)
      w.writerow(["image", "caption"])
      w.writerows(_rows())
  else:
    (root / "captions.jsonl").write_text(
        "".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in _rows()) + "\n",
        encoding="utf-8")
  return root


def _prepare(root: Path, data_dir: Path, capsys) -> dict:
  rc = cli.main(["prepare", "folder", "--manual-dir", str(root), "--data-dir", str(data_dir),
                 "--test-fraction", str(TEST_FRACTION), "--workers", "1"])
  out = capsys.readouterr()
  assert rc == 0, out.err
  return json.loads([l for l in out.out.splitlines() if l.startswith("{")][-1])


def _config(data_dir, root, **kw):
  return tiny_config(data_dir, dataset="folder", manual_dir=str(root),
                     folder_test_fraction=TEST_FRACTION, **kw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """The folder in both formats, prepared into one data dir."""
  tmp = tmp_path_factory.mktemp("folder")
  roots = {fmt: make_folder(tmp / fmt, fmt) for fmt in ("csv", "jsonl")}
  return tmp, roots


def test_prepare_both_formats_with_bad_cases(prepared, capsys):
  tmp, roots = prepared
  tables = {}
  for fmt, root in roots.items():
    s = _prepare(root, tmp / "tfds", capsys)
    assert s["dataset"] == "folder" and s["layout"] == "folder"
    assert s["images_present"] == len(GOOD)
    assert (s["images_missing"], s["images_corrupt"]) == (2, 2)  # listed in the log
    assert (s["captions_empty"], s["captions_unknown_image"]) == (1, 3)  # counted
    assert s["images_uncaptioned"] == 1
    assert s["caption_rows"] == 2 * len(GOOD) + 6
    log = Path(s["log"]).read_text()
    for name in (MISSING, NOT_AN_IMAGE, CORRUPT, OVERSIZED):
      assert name in log
    assert "decompression bomb" in log
    cfg = _config(tmp / "tfds", root)
    tr, te = pipeline.load_table(cfg, "train"), pipeline.load_table(cfg, "test")
    assert len(tr) + len(te) == 2 * len(GOOD) and len(te) > 0
    assert tr.images.shape[1:] == (64, 64, 3) and tr.text.shape[1:] == (50,)
    # The split is the hash rule's; no image is in both.
    assert {folder.split_of(i, TEST_FRACTION) for i in tr.image_ids} == {"train"}
    assert {folder.split_of(i, TEST_FRACTION) for i in te.image_ids} == {"test"}
    tables[fmt] = (tr, te)
    assert integrity.rebuild_command(cfg).startswith(
        f"t2i prepare folder --force --manual-dir {root} --test-fraction {TEST_FRACTION}")
    # a second run is a no-op
    assert cli.main(["prepare", "folder", "--manual-dir", str(root), "--data-dir",
                     str(tmp / "tfds"), "--test-fraction", str(TEST_FRACTION)]) == 0
    assert "Already prepared" in capsys.readouterr().out
  # Both formats give the same data: ids, captions with their quotes and commas, pixels.
  for a, b in zip(tables["csv"], tables["jsonl"]):
    np.testing.assert_array_equal(a.image_ids, b.image_ids)
    np.testing.assert_array_equal(a.captions, b.captions)
    np.testing.assert_array_equal(a.images, b.images)
  tr, te = tables["csv"]
  assert 'The "red" one, bright and flat' in set(tr.captions) | set(te.captions)
  # The pixels: every image is its colour (a png, a webp, a letterboxed jpeg alike).
  for t in (tr, te):
    for k, name in enumerate(t.image_ids):
      colour = np.array(COLOURS[name.rsplit("/", 1)[-1].split("_")[0]])
      assert np.abs(t.images[k, 32, 32].astype(int) - colour).max() <= 6, name


def test_train_sample_and_evaluate(prepared, capsys, monkeypatch):
  from t2i_jax.evals import dual_encoder  # pylint: disable=import-outside-toplevel
  tmp, roots = prepared
  # prepared on first use; no sample grid at eval (`t2i sample` draws one below)
  config = _config(tmp / "tfds2", roots["csv"], eval_sample_captions=0)
  workdir = tmp / "run"
  train.train_and_evaluate(config, workdir)
  assert (tmp / "tfds2" / "folder").is_dir()
  assert any(json.loads(l).get("split") == "test"
             for l in (workdir / "metrics.jsonl").read_text().splitlines())
  out = tmp / "s.png"
  assert cli.main(["sample", "--workdir", str(workdir), "a red square", "a blue one", "-n", "2",
                   "--out", str(out)]) == 0
  assert Image.open(out).size[0] > 0

  def untrained(images, image_index, text, cfg, progress):
    net = dual_encoder.DualEncoderNet(cfg)
    return net.init(jax.random.key(0), images[:1] / 255.0, text[:1])["params"], {"steps": 0}

  monkeypatch.setattr(dual_encoder, "train_dual_encoder", untrained)
  tiny = dual_encoder.DualConfig(widths=(4, 8, 16), text_hidden=16, embed_dim=8, batch_size=8,
                                 min_steps=1, max_steps=1)
  dual = dual_encoder.get_dual_encoder(config, cfg=tiny, progress=False)
  assert dual.meta["data"]["dataset"] == "folder"
  report = evaluate.evaluate_run(workdir, num=None, seeds=1, dual=dual, progress=False)
  by = {(r["name"], r["model"]): r for r in report["results"]}
  test_pairs = len(pipeline.load_table(config, "test"))
  assert by[("r_precision", "real")]["n"] == test_pairs
  assert np.isfinite(by[("FD_dual", "model1")]["mean"])
  assert "paper split" not in by[("r_precision", "retrieval")].get("note", "")


@pytest.mark.parametrize("fmt,content,line", [
    ("csv", "image,caption\na.jpg,ok\njust-one-field\n", 3),
    ("csv", "image,caption\na.jpg,ok\n,no image\n", 3),
    ("csv", "file,text\na.jpg,ok\n", 1),
    ("jsonl", '{"image": "a.jpg", "caption": "ok"}\n\n{"image": "a.jpg", caption}\n', 3),
    ("jsonl", '{"image": "a.jpg", "caption": "ok"}\n["a.jpg", "x"]\n', 2),
    ("jsonl", '{"image": "a.jpg"}\n', 1),
])
def test_malformed_line_is_named(tmp_path, capsys, fmt, content, line):
  root = tmp_path / "f"
  (root / "images").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(root / "images" / "a.jpg")
  (root / f"captions.{fmt}").write_text(content, encoding="utf-8")
  assert cli.main(["prepare", "folder", "--manual-dir", str(root), "--data-dir",
                   str(tmp_path / "tfds")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and f"captions.{fmt}, line {line}:" in err, err
  assert not (tmp_path / "tfds").exists()


def test_folder_without_captions_says_what_is_expected(tmp_path, capsys):
  (tmp_path / "f" / "images").mkdir(parents=True)
  assert cli.main(["prepare", "folder", "--manual-dir", str(tmp_path / "f")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "has no captions.csv or captions.jsonl; expected DIR/images/" in err
  assert cli.main(["prepare", "folder"]) == 2
  assert "needs --manual-dir" in capsys.readouterr().err
  with pytest.raises(Exception, match="manual_dir"):
    pipeline.get_builder(tiny_config(tmp_path, dataset="folder"))


def test_split_depends_only_on_the_image_path(tmp_path):
  small = folder.open_folder(make_folder(tmp_path / "small", images=GOOD[:5]))
  full = folder.open_folder(make_folder(tmp_path / "full"))
  where = lambda src, f: {p.image: s for s, ps in src.pairs_by_split(f).items() for p in ps}
  a, b = where(small, TEST_FRACTION), where(full, TEST_FRACTION)
  assert a and all(b[k] == v for k, v in a.items())
  assert set(b.values()) == {"train", "test"}
  # A larger fraction only moves images from train to test.
  c = where(full, 0.6)
  assert all(c[k] == "test" for k, v in b.items() if v == "test")
  # Over many paths the share is the fraction; the rule is fixed (SHA-256 of the path).
  names = [f"dir{i % 7}/img_{i}.jpg" for i in range(4000)]
  share = np.mean([folder.split_of(n) == "test" for n in names])
  assert abs(share - folder.DEFAULT_TEST_FRACTION) < 0.015
  assert [folder.split_of(f"x{i}.png", 0.5) for i in range(6)] == [
      "train", "test", "test", "train", "test", "train"]
