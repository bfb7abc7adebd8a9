"""GloVe sources and caption tensor modes."""

import numpy as np
import pytest

from t2i_jax import glove
from t2i_jax.errors import UserError


def _write(path, rows):
  path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in rows), encoding="utf-8")
  return path


@pytest.fixture
def tiny(tmp_path):
  rows = [("dog", [1, 0, 0, 0]), ("red", [0, 2, 0, 0]), ("ball", [0, 0, 3, 0]),
          ("grass", [0, 0, 0, 4])]
  return _write(tmp_path / "glove.tiny.4d.txt", rows)


def test_default_source_is_memory_mapped():
  g = glove.load()
  assert len(g) == 400_000 and g.dim == 50
  assert isinstance(g.vectors, np.memmap)
  assert "dog" in g and "the" in g and "zzzqqq" not in g


def test_text_file_dimension_detected_and_cached(tiny):
  g = glove.load(str(tiny))
  assert g.dim == 4 and len(g) == 4
  np.testing.assert_array_equal(g.vectors[g.index["red"]], [0, 2, 0, 0])
  glove.load.cache_clear()
  g2 = glove.load(str(tiny))  # second load comes from the .npy cache, memory-mapped
  assert isinstance(g2.vectors, np.memmap)
  np.testing.assert_array_equal(g2.vectors, g.vectors)


def test_modes(tiny):
  g = glove.load(str(tiny))
  s = g.encode("A red dog, a red ball and a unicorn", "sum")
  np.testing.assert_allclose(s.vector, [1, 4, 3, 0])  # unicorn is OOV: adds zero
  assert s.num_tokens == 5 and s.num_oov == 1 and s.oov_words == ["unicorn"]
  m = g.encode("red dog unicorn", "mean")
  np.testing.assert_allclose(m.vector, [0.5, 1, 0, 0])
  q = g.encode("red dog unicorn ball", "sequence", max_len=3)
  assert q.vector.shape == (3, 4) and q.mask.tolist() == [True, True, True]
  np.testing.assert_allclose(q.vector[2], [0, 0, 3, 0])  # OOV skipped, order kept
  e = g.encode("", "sequence", max_len=3)
  assert not e.mask.any() and not e.vector.any()
  assert not g.encode("unicorn", "sum").vector.any()


def test_sum_matches_paper_on_default():
  g = glove.load()
  enc = g.encode("A dog runs on the grass", "sum")
  expected = g.vectors[g.index["dog"]] + g.vectors[g.index["runs"]] + g.vectors[g.index["grass"]]
  np.testing.assert_allclose(enc.vector, expected, rtol=1e-6)


def test_malformed_line_names_file_and_line(tmp_path):
  p = tmp_path / "bad.txt"
  p.write_text("dog 1 2 3\ncat 1 2\nfox 1 2 3\n")
  with pytest.raises(UserError, match=r"bad\.txt, line 2"):
    glove.load(str(p))
  p2 = tmp_path / "bad2.txt"
  p2.write_text("dog 1 2 3\ncat 1 x 3\n")
  with pytest.raises(UserError, match=r"line 2"):
    glove.load(str(p2))


def test_missing_and_non_utf8(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    glove.load(str(tmp_path / "nope.txt"))
  p = tmp_path / "latin.txt"
  p.write_bytes("caf\xe9 1 2\n".encode("latin-1"))
  with pytest.raises(UserError, match="UTF-8"):
    glove.load(str(p))


def test_unknown_mode(tiny):
  with pytest.raises(UserError, match="caption mode"):
    glove.load(str(tiny)).encode("dog", "max")
