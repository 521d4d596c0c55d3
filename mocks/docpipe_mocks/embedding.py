"""Deterministic mock embeddings that carry lexical similarity, by feature hashing.

A stand-in for a real embedding model, offline and free: it knows words, not meanings, so it
finds "drain" for "draining" but not "shutdown" for "stop". What it does to be useful anyway:

* words are lower-cased, English stop words dropped and light suffix stripping applied
  ("workers", "draining", "drained" all count as "drain"/"worker");
* each word is weighted by an inverse-document-frequency prior that needs no corpus: common
  English words count little, long words and identifiers (with digits, `_`, `-`, `.`) count
  most, since they are what tells documentation pages apart;
* word unigrams and (at half weight) bigrams are hashed into `dimensions` signed buckets with
  sub-linear term frequency, and the vector is L2-normalised.

Texts that share telling words get a high cosine, so search over mock embeddings returns
sensible hits; a real model (OpenAI's text-embedding-3) replaces it in production.
"""

from __future__ import annotations

import re
from functools import lru_cache
from hashlib import blake2b

import numpy as np
import numpy.typing as npt

# Identifiers keep their inner dots, dashes and underscores: "sources.list", "no-install".
_WORD = re.compile(r"\w+(?:[.\-]\w+)*")

# fmt: off
_STOPWORD_LIST = """
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each either etc even ever
few for from further get gets got had has have having he her here hers him his how however i if in
into is it its itself just let like may me might more most much must my no nor not now of off
often on once one only or other our ours out over own per please rather really said same say see
seem shall she should since so some such than that the their theirs them then there these they
this those through thus to too two under until up upon us use used uses using very via want was
way we well were what whatever when where whether which while who whom whose why will with within
without would yes yet you your yours
"""
# Words of everyday English that documentation uses everywhere: they say little about which page
# answers a question (an inverse-document-frequency prior, for a model that sees no corpus).
_COMMON_LIST = """
able add added allow allows another available back based best better call called case change
changes check come common contain contains default different does example examples file files
find first following follow found free general give given good great help important include
includes including information instead keep know last later least less line list long look made
main make makes making many means need needs new next note number old open part people place
point possible present problem provide provides put read run runs set sets show simple since
small something specific start still support supported sure system take tell thing things think
time true try turn type used user users value version work works write written year years
"""
# fmt: on
_STOPWORDS = frozenset(_STOPWORD_LIST.split())
_COMMON = frozenset(_COMMON_LIST.split())
# (ending, replacement), the first that fits wins; then a final "e" goes, so that "configure",
# "configured", "configuring" and "configuration" all become "configur".
_SUFFIXES = (
    ("ational", ""), ("ations", ""), ("ation", ""), ("ments", ""), ("ment", ""), ("ings", ""),
    ("ing", ""), ("edly", ""), ("ies", "y"), ("ied", "y"), ("ed", ""), ("ly", ""), ("s", ""),
)  # fmt: skip
_KEEP_ENDINGS = ("ss", "us", "is", "os")


def stem(word: str) -> str:
    """A light suffix-stripping stem of a lower-cased word, keeping at least three letters
    ("draining" -> "drain", "workers" -> "worker", "libraries" -> "library")."""
    if not word.isalpha() or len(word) <= 3 or word.endswith(_KEEP_ENDINGS):
        return word
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + replacement
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


def word_weight(word: str) -> float:
    """The prior weight of a (lower-cased) word: how much it tells texts apart."""
    if word.isdigit():
        return 0.5
    if not word.isalpha():
        return 1.6  # an identifier, path, option or version: what documentation is searched for
    if word in _COMMON or stem(word) in _COMMON_STEMS:
        return 0.35
    return min(1.5, 0.7 + 0.1 * len(word))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    # blake2b, not hash(): vectors must be the same in every process. Cached because a corpus
    # reuses its vocabulary and hashing would otherwise be most of the cost.
    return int.from_bytes(blake2b(word.encode(), digest_size=8).digest(), "little")


def _mix(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # splitmix64's finaliser: turns a combination of two word hashes into a well-spread bigram
    # hash with array arithmetic instead of one blake2b call per bigram.
    values = (values ^ (values >> np.uint64(30))) * _MIX1
    values = (values ^ (values >> np.uint64(27))) * _MIX2
    return values ^ (values >> np.uint64(31))


_COMMON_STEMS = frozenset(stem(word) for word in _COMMON)


@lru_cache(maxsize=1 << 18)
def _term(word: str) -> tuple[int, float] | None:
    """A word's feature hash and weight; None for a stop word. Cached: a corpus reuses its
    vocabulary, and stemming and hashing would otherwise be most of the cost."""
    word = word.strip("._-")
    if not word or word in _STOPWORDS:
        return None
    return _word_hash(stem(word)), word_weight(word)


def _features(text: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]:
    terms = [term for term in map(_term, _WORD.findall(text.lower())) if term is not None]
    if not terms:
        # Text without any content word (empty, punctuation, stop words only): still a
        # stable, distinct vector.
        return np.array([_word_hash(f"\x00{text}")], dtype=np.uint64), np.ones(1)
    unigrams = np.fromiter((h for h, _ in terms), dtype=np.uint64, count=len(terms))
    weights = np.fromiter((w for _, w in terms), dtype=np.float64, count=len(terms))
    # Multiplying only the first word makes "a b" and "b a" different bigrams; a bigram counts
    # half the mean of its words.
    bigrams = _mix(unigrams[:-1] * _GOLDEN ^ unigrams[1:])
    pair_weights = 0.25 * (weights[:-1] + weights[1:])
    return np.concatenate((unigrams, bigrams)), np.concatenate((weights, pair_weights))


def embed_array(text: str, dimensions: int) -> npt.NDArray[np.float64]:
    """Return the unit-length, deterministic embedding of `text` as a numpy array."""
    if dimensions < 1:
        raise ValueError(f"dimensions must be at least 1, got {dimensions}")
    hashes, weights = _features(text)
    features, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    # Each distinct feature: its weight (the first occurrence's: the same word, the same
    # weight) times a sub-linear term frequency (ten mentions are not ten times as telling).
    feature_weights = np.zeros(len(features))
    feature_weights[inverse] = weights
    buckets = (features >> np.uint64(1)) % np.uint64(dimensions)
    signs = np.where(features & np.uint64(1), 1.0, -1.0)
    values = signs * feature_weights * (1.0 + np.log(counts))
    # With weights, bincount sums floats (its stubs claim integers).
    vector = np.asarray(
        np.bincount(buckets.astype(np.intp), weights=values, minlength=dimensions),
        dtype=np.float64,
    )
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        # Signed weights that cancel exactly in every bucket: fall back to one stable component.
        vector[int(buckets[0])] = 1.0
        return vector
    return vector / norm


def embed_text(text: str, dimensions: int) -> list[float]:
    """Return the unit-length, deterministic embedding of `text` with `dimensions` components."""
    vector: list[float] = embed_array(text, dimensions).tolist()
    return vector
