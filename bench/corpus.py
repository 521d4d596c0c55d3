"""Generated text for the benchmarks, shaped like natural text: words with Zipf-like frequencies
from a large vocabulary, and documents about one of a few topics.

Without topics every chunk is a random draw from one distribution and all embeddings sit at about
the same distance from each other: the worst case for an HNSW index (slower inserts, lower
recall), which neither real text nor real embeddings are. `bench/pipeline.py` (documents) and
`bench/api.py` (stored chunks) both draw from here.
"""

from __future__ import annotations

import random


def _vocabulary(size: int = 5000) -> list[str]:
    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(size)]


# Words drawn with Zipf-like frequencies from a large vocabulary, as in natural text: documents
# share common words and differ in rare ones (a tiny vocabulary would make every embedding alike,
# which is not what an index meets in practice).
WORDS = _vocabulary()
WEIGHTS = [1.0 / (rank + 1) for rank in range(len(WORDS))]
# Documents are about something: each belongs to one of TOPICS topics, and half of its words come
# from that topic's own vocabulary (again Zipf-like).
TOPICS = 50
TOPIC_WORDS = [random.Random(1000 + t).sample(WORDS, 200) for t in range(TOPICS)]
TOPIC_WEIGHTS = [1.0 / (rank + 1) for rank in range(200)]


def pick_topic(rng: random.Random) -> list[str]:
    """One topic's vocabulary, chosen with `rng`."""
    return TOPIC_WORDS[rng.randrange(TOPICS)]


def make_sentence(rng: random.Random, topic: list[str]) -> str:
    """A sentence of 8 to 16 words, about half of them from `topic`."""
    n = rng.randint(8, 16)
    words = rng.choices(WORDS, WEIGHTS, k=n) + rng.choices(topic, TOPIC_WEIGHTS, k=n)
    rng.shuffle(words)
    return " ".join(words[:n]).capitalize() + "."


def make_paragraph(rng: random.Random, topic: list[str]) -> str:
    """Three to six sentences about `topic`."""
    return " ".join(make_sentence(rng, topic) for _ in range(rng.randint(3, 6)))


def make_document(i: int, size: int = 4096) -> bytes:
    """Markdown document number `i`, about `size` bytes, with headings and paragraphs."""
    rng = random.Random(i)
    topic = pick_topic(rng)
    parts = [f"# Survey report {i}\n"]
    section = 0
    while sum(len(p) for p in parts) < size:
        if rng.random() < 0.2:
            section += 1
            parts.append(f"\n## Section {section}\n")
        parts.append("\n" + make_paragraph(rng, topic) + "\n")
    return "".join(parts)[:size].encode()
