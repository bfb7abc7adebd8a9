"""Caption cleaning, exactly as in the paper (SEED.md, "Data processing").

Order matters and is the paper's: URLs, contractions, digit tokens, non-letters,
lowercase, stopwords. The stopword list is NLTK's English list (179 words), shipped in
``t2i_jax/resources`` so that nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import importlib.resources
import re

_URL = re.compile(r"https?://\S+|www\.\S+")
# The paper's notebook applies these in this order, before lowercasing.
_CONTRACTIONS = (
    (re.compile(r"won't"), "will not"),
    (re.compile(r"can't"), "can not"),
    (re.compile(r"n't"), " not"),
    (re.compile(r"'re"), " are"),
    (re.compile(r"'s"), " is"),
    (re.compile(r"'d"), " would"),
    (re.compile(r"'ll"), " will"),
    (re.compile(r"'t"), " not"),
    (re.compile(r"'ve"), " have"),
    (re.compile(r"'m"), " am"),
)
# A whitespace-delimited token that holds a digit. The lookbehind anchors matches at token
# starts: without it a long digit-free token costs quadratic time (100k chars: minutes).
_DIGIT_TOKEN = re.compile(r"(?<!\S)\S*\d\S*")
_NON_LETTERS = re.compile(r"[^A-Za-z]+")


@functools.lru_cache(maxsize=None)
def stopwords() -> frozenset[str]:
  """NLTK's English stopword list, read from the package."""
  text = (importlib.resources.files("t2i_jax") / "resources" / "stopwords_en.txt").read_text()
  return frozenset(w.strip() for w in text.splitlines() if w.strip())


def clean_caption(caption: str, remove_stopwords: bool = True) -> str:
  """Cleans one caption the paper's way; never raises, and is idempotent.

  ``remove_stopwords=False`` keeps steps 1-5 only. Models that read word order use it,
  because NLTK's list drops the relations "above", "below", "over" and "under".

  >>> clean_caption("A child in a pink dress is climbing up a set of stairs in an entry way .")
  'child pink dress climbing set stairs entry way'
  """
  if not isinstance(caption, str):
    caption = "" if caption is None else str(caption)
  s = _URL.sub(" ", caption)
  for pattern, repl in _CONTRACTIONS:
    s = pattern.sub(repl, s)
  s = _DIGIT_TOKEN.sub(" ", s)
  s = _NON_LETTERS.sub(" ", s)
  s = s.lower()
  stop = stopwords() if remove_stopwords else frozenset()
  return " ".join(w for w in s.split() if w not in stop)
