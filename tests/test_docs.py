"""The README and docs/*.md are read by people: their tables and links must hold together.

A results table whose rows carry more cells than its header shows numbers under the wrong
columns (the CVAE table of the README did until stop 40); a link to a moved
section or a missing picture leaves the reader stranded.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def table_cells(line: str) -> list[str]:
  """The cells of a Markdown table row; a | inside backticks does not split."""
  body = line.strip()
  body = body[1:-1] if body.endswith("|") and len(body) > 1 else body[1:]
  cells, cur, in_code = [], "", False
  for ch in body:
    if ch == "`":
      in_code = not in_code
    if ch == "|" and not in_code:
      cells.append(cur)
      cur = ""
    else:
      cur += ch
  return cells + [cur]


def malformed_rows(text: str) -> list[str]:
  """'line N: k cells under a header of m' for every row that does not fit its table."""
  lines = text.split("\n")
  bad, i = [], 0
  while i < len(lines) - 1:
    if lines[i].startswith("|") and _SEPARATOR.match(lines[i + 1]):
      width, separator = len(table_cells(lines[i])), len(table_cells(lines[i + 1]))
      if separator != width:
        bad.append(f"line {i + 2}: separator of {separator} under {width}")
      j = i + 2
      while j < len(lines) and lines[j].startswith("|"):
        if len(table_cells(lines[j])) != width:
          bad.append(f"line {j + 1}: {len(table_cells(lines[j]))} cells under a header of {width}")
        j += 1
      i = j
    else:
      i += 1
  return bad


def heading_anchors(text: str) -> set[str]:
  """GitHub's anchors for the Markdown headings of ``text`` (code blocks skipped)."""
  anchors, in_code = set(), False
  for line in text.split("\n"):
    if line.startswith("```"):
      in_code = not in_code
    m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*$", line)
    if m:
      slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
      anchors.add(slug)
  return anchors


def broken_links(path: Path) -> list[str]:
  """Relative links of ``path`` whose file or heading anchor does not exist."""
  text = path.read_text()
  bad = []
  for target in _LINK.findall(text):
    if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    if not dest.exists():
      bad.append(f"{target}: no file {dest}")
    elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
      bad.append(f"{target}: no heading with that anchor in {dest.name}")
  return bad


def test_table_checker_catches_a_shifted_row():
  ok = "| a | b |\n|---|---:|\n| 1 | `x|y` |\n"
  assert malformed_rows(ok) == []
  assert malformed_rows(ok + "| 1 | 2 | 3 |\n") == ["line 4: 3 cells under a header of 2"]


def test_anchor_slugs_follow_github():
  text = ("## Results: built-in shapes (flow)\n```\n# not a heading\n```\n"
          "### Scale: one GPU, all GPUs")
  assert heading_anchors(text) == {"results-built-in-shapes-flow", "scale-one-gpu-all-gpus"}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_tables_are_well_formed(path):
  assert malformed_rows(path.read_text()) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path):
  assert broken_links(path) == []
