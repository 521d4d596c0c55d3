"""Deterministic mock embeddings that carry lexical similarity, by feature hashing.

The lower-cased word unigrams and bigrams of a text are hashed into `dimensions` signed buckets,
weighted by sub-linear term frequency, and the vector is L2-normalised: texts that share words get a
high cosine, so search over mock embeddings returns sensible hits.
"""

from __future__ import annotations

import re
from functools import lru_cache
from hashlib import blake2b

import numpy as np
import numpy.typing as npt

_WORD = re.compile(r"\w+")

# Function words would otherwise dominate every vector and make unrelated English texts look alike.
# fmt: off
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "for", "from", "had", "has",
    "have", "he", "her", "his", "i", "if", "in", "into", "is", "it", "its", "of", "on", "or", "our",
    "she", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this",
    "to", "was", "we", "were", "what", "when", "which", "who", "will", "with", "you", "your",
})
# fmt: on

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


def _feature_hashes(text: str) -> npt.NDArray[np.uint64]:
    words = _WORD.findall(text.lower())
    content = [word for word in words if word not in _STOPWORDS] or words
    if not content:
        # Text without any word character (empty, punctuation): still a stable, distinct vector.
        return np.array([_word_hash(f"\x00{text}")], dtype=np.uint64)
    unigrams = np.fromiter(map(_word_hash, content), dtype=np.uint64, count=len(content))
    # Multiplying only the first word makes "a b" and "b a" different bigrams.
    bigrams = _mix(unigrams[:-1] * _GOLDEN ^ unigrams[1:])
    return np.concatenate((unigrams, bigrams))


def embed_array(text: str, dimensions: int) -> npt.NDArray[np.float64]:
    """Return the unit-length, deterministic embedding of `text` as a numpy array."""
    if dimensions < 1:
        raise ValueError(f"dimensions must be at least 1, got {dimensions}")
    features, counts = np.unique(_feature_hashes(text), return_counts=True)
    buckets = (features >> np.uint64(1)) % np.uint64(dimensions)
    signs = np.where(features & np.uint64(1), 1.0, -1.0)
    # Sub-linear term frequency: a word repeated ten times is not ten times as telling.
    weights = signs * (1.0 + np.log(counts))
    # With weights, bincount sums floats (its stubs claim integers).
    vector = np.asarray(
        np.bincount(buckets.astype(np.intp), weights=weights, minlength=dimensions),
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
