"""Ambiguous text phrases about digits for the ``digits_av`` dataset.

This module is the single source of truth for the digit properties used by the
text modality: ``scripts/make_digits_av.py`` samples phrases from it and the
tests parse the shipped phrases back with :func:`phrase_candidates` to check
that every phrase is true of its label.

Grammar of a phrase (lower-case words separated by single spaces)::

    [PREFIX] ARTICLE [ADJECTIVE] NOUN [CLAUSE [and CLAUSE]]

Each adjective / clause denotes a set of digits; a phrase denotes the
intersection of the sets of its parts. Informative phrases always denote 2 to 4
candidate digits, never a unique one; filler adjectives ("handwritten",
"single", ...) without clauses give uninformative phrases (all ten digits).

Design decisions about shapes (documented because they are judgement calls for
handwritten digits):

* digits "with a closed loop" are {0, 6, 8, 9}; 4 is excluded because it is
  usually written open, and 2 is excluded even though some writers loop it.
* digits "made of straight lines" are {1, 4, 7}; every other digit is
  "curved" (has at least one curved stroke).
* digits that "look the same upside down" are {0, 1, 8}.
* "between" is never used; ranges are expressed as "larger than K" /
  "smaller than K" / "at least K" / "at most K" (inclusive for "at").
* "odd prime" is a single adjective meaning {3, 5, 7}.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

DIGIT_WORDS: tuple[str, ...] = (
  "zero",
  "one",
  "two",
  "three",
  "four",
  "five",
  "six",
  "seven",
  "eight",
  "nine",
)
ALL_DIGITS: frozenset[int] = frozenset(range(10))

#: Optional leading words before the article.
PREFIXES: tuple[str, ...] = (
  "",
  "",
  "",
  "this is",
  "it is",
  "here is",
  "the picture shows",
  "someone wrote",
  "you are looking at",
  "the image contains",
)
#: Head nouns (all synonyms of "digit").
NOUNS: tuple[str, ...] = ("digit", "number", "numeral", "figure")
#: Adjectives that carry no information about the digit.
FILLER_ADJECTIVES: tuple[str, ...] = ("", "handwritten", "single", "scribbled")

_EVEN = frozenset({0, 2, 4, 6, 8})
_ODD = frozenset({1, 3, 5, 7, 9})
_PRIME = frozenset({2, 3, 5, 7})
_SQUARE = frozenset({0, 1, 4, 9})
_LOOP = frozenset({0, 6, 8, 9})
_STRAIGHT = frozenset({1, 4, 7})


def _gt(k: int) -> frozenset[int]:
  return frozenset(range(k + 1, 10))


def _lt(k: int) -> frozenset[int]:
  return frozenset(range(0, k))


#: Adjective meaning -> (digit set, surface forms placed before the noun).
ADJECTIVES: dict[str, tuple[frozenset[int], tuple[str, ...]]] = {
  "even": (_EVEN, ("even",)),
  "odd": (_ODD, ("odd",)),
  "prime": (_PRIME, ("prime",)),
  "oddprime": (_PRIME & _ODD, ("odd prime",)),
  "nonprime": (ALL_DIGITS - _PRIME, ("non prime",)),
  "square": (_SQUARE, ("square", "perfect square")),
}

#: Clause meaning -> (digit set, surface forms placed after the noun).
CLAUSES: dict[str, tuple[frozenset[int], tuple[str, ...]]] = {}
for _k in range(2, 8):
  CLAUSES[f"gt{_k}"] = (
    _gt(_k),
    tuple(
      f"{w} {DIGIT_WORDS[_k]}" for w in ("larger than", "greater than", "bigger than", "above", "more than")
    )
    + (f"at least {DIGIT_WORDS[_k + 1]}",),
  )
for _k in range(3, 8):
  CLAUSES[f"lt{_k}"] = (
    _lt(_k),
    tuple(f"{w} {DIGIT_WORDS[_k]}" for w in ("smaller than", "less than", "below", "lower than"))
    + (f"at most {DIGIT_WORDS[_k - 1]}",),
  )
CLAUSES.update(
  {
    "loop": (_LOOP, ("with a closed loop", "with a loop", "that has a loop", "containing a round hole")),
    "noloop": (ALL_DIGITS - _LOOP, ("without a loop", "with no closed loop", "that has no hole")),
    "straight": (
      _STRAIGHT,
      ("made of straight lines", "drawn with straight strokes only", "with only straight strokes"),
    ),
    "curved": (
      ALL_DIGITS - _STRAIGHT,
      ("with a curved stroke", "that has a curve", "drawn with some curves"),
    ),
    "mult3": (frozenset({0, 3, 6, 9}), ("divisible by three", "that is a multiple of three")),
    "pow2": (frozenset({1, 2, 4, 8}), ("that is a power of two",)),
    "flip": (frozenset({0, 1, 8}), ("that looks the same upside down", "that reads the same upside down")),
  }
)
del _k

#: Inclusive bounds on the number of candidates of an informative phrase.
MIN_CANDIDATES = 2
MAX_CANDIDATES = 4


def spec_candidates(spec: Sequence[str]) -> frozenset[int]:
  """Returns the digits satisfying every meaning key in ``spec``."""
  out = ALL_DIGITS
  for key in spec:
    out = out & (ADJECTIVES.get(key) or CLAUSES[key])[0]
  return out


def informative_specs() -> list[tuple[str | None, tuple[str, ...]]]:
  """Lists all (adjective, clauses) meaning combinations usable in phrases.

  A combination is kept when it has 2..4 candidate digits and every part is
  needed (dropping any part would enlarge the candidate set).
  """
  adjs: list[str | None] = [None, *ADJECTIVES]
  clause_keys = list(CLAUSES)
  clause_opts: list[tuple[str, ...]] = [()]
  clause_opts += [(c,) for c in clause_keys]
  clause_opts += list(itertools.combinations(clause_keys, 2))
  out = []
  for adj in adjs:
    for clauses in clause_opts:
      parts = ([adj] if adj else []) + list(clauses)
      if not parts:
        continue
      cand = spec_candidates(parts)
      if not MIN_CANDIDATES <= len(cand) <= MAX_CANDIDATES:
        continue
      if any(spec_candidates(parts[:i] + parts[i + 1 :]) == cand for i in range(len(parts))):
        continue
      out.append((adj, tuple(clauses)))
  return out


def _article(next_word: str) -> str:
  return "an" if next_word[0] in "aeiou" else "a"


def render(adj_surface: str, noun: str, clause_surfaces: Sequence[str], prefix: str = "") -> str:
  """Builds a phrase string from already chosen surface forms."""
  head = f"{adj_surface} {noun}".strip()
  words = [prefix, _article(head), head]
  if clause_surfaces:
    words.append(" and ".join(clause_surfaces))
  return " ".join(w for w in words if w)


def sample_phrase(label: int, rng: np.random.Generator, uninformative_prob: float = 0.1) -> str:
  """Samples a random phrase that is true of ``label``.

  With probability ``uninformative_prob`` the phrase only says that it is a
  (handwritten) digit; otherwise it narrows the digit to 2..4 candidates.
  """
  prefix = PREFIXES[rng.integers(len(PREFIXES))]
  noun = NOUNS[rng.integers(len(NOUNS))]
  if rng.random() < uninformative_prob:
    filler = FILLER_ADJECTIVES[rng.integers(1, len(FILLER_ADJECTIVES))]
    return render(filler, noun, (), prefix)
  specs = [s for s in _SPECS if label in spec_candidates(([s[0]] if s[0] else []) + list(s[1]))]
  adj, clauses = specs[rng.integers(len(specs))]
  if adj:
    forms = ADJECTIVES[adj][1]
    adj_surface = forms[rng.integers(len(forms))]
  else:
    adj_surface = FILLER_ADJECTIVES[rng.integers(len(FILLER_ADJECTIVES))]
  clause_surfaces = []
  for c in clauses:
    forms = CLAUSES[c][1]
    clause_surfaces.append(forms[rng.integers(len(forms))])
  order = rng.permutation(len(clause_surfaces))
  clause_surfaces = [clause_surfaces[i] for i in order]
  return render(adj_surface, noun, clause_surfaces, prefix)


_SPECS = informative_specs()

_ADJ_LOOKUP = {form: key for key, (_, forms) in ADJECTIVES.items() for form in forms}
_CLAUSE_LOOKUP = {form: key for key, (_, forms) in CLAUSES.items() for form in forms}


def phrase_candidates(phrase: str) -> frozenset[int]:
  """Parses ``phrase`` and returns the set of digits it is true of.

  Raises:
    ValueError: if the phrase does not follow the module's grammar.
  """
  words = phrase.split(" ")
  noun_pos = [i for i, w in enumerate(words) if w in NOUNS]
  if len(noun_pos) != 1:
    raise ValueError(f"Expected exactly one noun in {phrase!r}")
  before, after = words[: noun_pos[0]], words[noun_pos[0] + 1 :]
  for prefix in sorted(PREFIXES, key=len, reverse=True):
    pw = prefix.split(" ") if prefix else []
    if before[: len(pw)] == pw and len(before) > len(pw) and (before[len(pw)] in ("a", "an")):
      before = before[len(pw) + 1 :]
      break
  else:
    raise ValueError(f"Bad prefix/article in {phrase!r}")
  keys: list[str] = []
  adj = " ".join(before)
  if adj in _ADJ_LOOKUP:
    keys.append(_ADJ_LOOKUP[adj])
  elif adj not in FILLER_ADJECTIVES:
    raise ValueError(f"Unknown adjective {adj!r} in {phrase!r}")
  if after:
    for clause in " ".join(after).split(" and "):
      if clause not in _CLAUSE_LOOKUP:
        raise ValueError(f"Unknown clause {clause!r} in {phrase!r}")
      keys.append(_CLAUSE_LOOKUP[clause])
  return spec_candidates(keys)


def all_words() -> list[str]:
  """Returns every word any phrase can contain, sorted."""
  text = " ".join(
    list(PREFIXES)
    + list(NOUNS)
    + list(FILLER_ADJECTIVES)
    + [f for _, forms in ADJECTIVES.values() for f in forms]
    + [f for _, forms in CLAUSES.values() for f in forms]
    + ["a", "an", "and"]
  )
  return sorted(set(text.split()))
