"""Bad inputs through the `t2i` command: one `error:` line, exit status 2, nothing half-done.

Cases covered elsewhere (not repeated here):
  * Flickr8k folder nonexistent / empty / wrong layout: test_prepare_flickr8k.py
    ::test_strict_and_wrong_folder, test_flickr8k.py::test_wrong_folder_names_the_three_layouts,
    ::test_incomplete_folder_says_what_is_missing.
  * Token / captions / split files with malformed lines (line named), wrong encoding:
    test_flickr8k.py::test_malformed_token_line_is_named, ::test_malformed_kaggle_line_is_named,
    ::test_malformed_split_file_is_named, ::test_wrong_encoding_is_named,
    ::test_kaggle_wrong_encoding_is_named.
  * Zero-byte, truncated, not-a-JPEG and 30000x30000 images (skipped, logged, counted; an
    error with --strict): test_flickr8k.py::test_unusable_images_skipped_logged_or_strict,
    ::test_truncated_jpeg_detected_even_if_pil_is_told_to_load_truncated,
    ::test_bomb_refused_without_decoding, ::test_bomb_in_the_corpus_is_reported,
    test_prepare_flickr8k.py::test_strict_and_wrong_folder.
  * Malformed / missing / non-UTF-8 GloVe file (loader): test_glove.py.
  * `t2i sample` captions empty, whitespace, all stopwords, all OOV, non-Latin, 100k
    characters: test_sample.py::test_unusable_captions_are_one_line_errors,
    ::test_a_100k_character_caption_works, ::test_out_of_vocabulary_words_are_named_once_per_caption.
  * Workdir without a checkpoint / nonexistent: test_sample.py::test_bad_workdirs_are_one_line_errors.
  * Resuming with another model config: test_train.py::test_resume_with_another_model_config_is_refused;
    a checkpoint of other shapes: test_reliability.py::test_checkpoint_of_another_model_names_the_differing_params.
  * Disk full while checkpointing: test_reliability.py::test_a_save_that_fails_leaves_the_previous_checkpoints_complete.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from t2i_jax import cli
from t2i_jax.data import pipeline, shapes

import tiny_runs



def _error_line(capsys) -> str:
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.strip()]
  assert lines and lines[-1].startswith("error: "), err
  assert "\n" not in lines[-1]
  return lines[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A config file and an 8-step run of it."""
  base = tmp_path_factory.mktemp("bad_inputs")
  with pytest.MonkeyPatch.context() as mp:  # what conftest sets, for a module-scoped fixture
    mp.setenv("T2I_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    mp.setenv("T2I_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))
    config_path = base / "tiny.py"
    config_path.write_text(tiny_runs.tiny_config_file(base / "tfds", max_steps=8))
    workdir = base / "run"
    assert cli.main(["train", str(config_path), "--workdir", str(workdir)]) == 0
    yield {"config_path": config_path, "workdir": workdir, "base": base}


def _train(tiny, workdir, *overrides) -> int:
  return cli.main(["train", str(tiny["config_path"]), "--workdir", str(workdir), *overrides])


# ------------------------------------------------------------------- workdir and config


@pytest.mark.parametrize("override, needle", [
    ("--config.no_such_key=1", "no_such_key"),
    ("--config.batch_size=eight", "batch_size"),
])
def test_bad_override_leaves_no_workdir(tiny, tmp_path, capsys, override, needle):
  assert _train(tiny, tmp_path / "w", override) == 2
  assert needle in _error_line(capsys)
  assert not (tmp_path / "w").exists()


def test_workdir_of_another_experiment_is_refused(tiny, capsys):
  before = (tiny["workdir"] / "metrics.jsonl").read_text()
  assert _train(tiny, tiny["workdir"], "--config.learning_rate=0.5") == 2
  line = _error_line(capsys)
  assert "holds a run with another config" in line and "learning_rate" in line
  assert (tiny["workdir"] / "metrics.jsonl").read_text() == before


def test_read_only_workdir_is_named_before_training(tiny, tmp_path, capsys, monkeypatch):
  workdir = tmp_path / "ro"
  workdir.mkdir()
  if os.geteuid() != 0:  # root writes through 0o555: simulate the refusal instead
    workdir.chmod(0o555)
  else:
    real = Path.touch

    def refuse(self, *args, **kwargs):
      if self.parent == workdir:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
      return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", refuse)
  try:
    assert _train(tiny, workdir) == 2
  finally:
    workdir.chmod(0o755)
  line = _error_line(capsys)
  assert f"cannot write to workdir {workdir}" in line and "Permission denied" in line
  assert not (workdir / "checkpoints").exists()


# ------------------------------------------------------------------------------- GloVe


def test_malformed_glove_file_in_prepare(tmp_path, capsys):
  bad = tmp_path / "bad.txt"
  bad.write_text("red 0.1 0.2 0.3 0.4\nblue 0.1 0.2\n")
  assert cli.main(["prepare", "shapes", "--glove", str(bad), "--num-images", "10",
                   "--data-dir", str(tmp_path / "tfds")]) == 2
  line = _error_line(capsys)
  assert "bad.txt" in line and "line 2" in line


def test_glove_of_another_dimension_at_sampling(tiny, tmp_path, capsys, monkeypatch):
  """The run trained on 50-d vectors; its GloVe path now holds 4-d ones."""
  small = tmp_path / "glove4.txt"
  small.write_text("red 0.1 0.2 0.3 0.4\ncircle 0.5 0.6 0.7 0.8\n")
  from t2i_jax import glove as glove_lib  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel
  four = glove_lib.load(str(small))
  monkeypatch.setattr(common.CaptionSpec, "load_glove", lambda self: four)
  out = tmp_path / "g.png"
  assert cli.main(["sample", "--workdir", str(tiny["workdir"]), "red circle",
                   "--out", str(out)]) == 2
  line = _error_line(capsys)
  assert "have dimension 4" in line and "not trained on" in line
  assert not out.exists()


# ---------------------------------------------------------------------------- disk full


def test_disk_full_while_preparing_marks_nothing_complete(tmp_path, capsys, monkeypatch):
  def full(args):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(shapes, "_render_chunk", full)
  assert cli.main(["prepare", "shapes", "--num-images", "10", "--seed", "3",
                   "--data-dir", str(tmp_path / "tfds")]) == 2
  assert "Disk full" in _error_line(capsys)
  cfg = {"dataset": "shapes", "data_dir": str(tmp_path / "tfds"), "num_images": 10,
         "shapes_seed": 3}
  import ml_collections  # pylint: disable=import-outside-toplevel
  assert not pipeline.get_builder(ml_collections.ConfigDict(cfg)).is_prepared()
