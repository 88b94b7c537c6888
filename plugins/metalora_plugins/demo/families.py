"""The task families of the ``demo`` suite and their generators.

A family is one kind of multiple-choice question ("which number is larger?")
with a generator that writes an example whose correct option sits at a given
position. The role split is by family: held-out (test) families are never
seen in training, but each applies a *concept* that some training family
also exercises, with new wording or new word lists (sentiment of a product
review in training, of a tweet at test time; "which is larger" versus "which
is smaller"; "which is an animal" versus "which is a fruit"), so meta-learning
has shared structure to transfer.

Balance and position. For every task the answer positions are the sequence
``0, 1, ..., k-1, 0, 1, ...`` shuffled, so each position holds the answer
equally often (to within one). Label families ("positive"/"negative",
"yes"/"no", "even"/"odd") keep their labels in a fixed order, so the same
scheme balances the classes exactly; the other families place the correct
item at the drawn position and the distractors, shuffled, around it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from metalora import MAX_OPTIONS, MetaloraError, Task, TaskRecord, TaskRole
from metalora_plugins.demo import words

SUITE_NAME = "demo"
EXAMPLES_PER_TASK = 60
"""Examples generated per task (divisible by 2, 3 and 4, so positions balance exactly)."""
MAX_ATTEMPTS = 1000
"""Draws allowed per example to find an input not yet used in the task."""

SENTIMENT_LABELS: tuple[str, ...] = ("positive", "negative")
YES_NO: tuple[str, ...] = ("yes", "no")
PARITY_LABELS: tuple[str, ...] = ("even", "odd")

Maker = Callable[[random.Random, int], tuple[str, tuple[str, ...]]]
"""``make(rng, answer) -> (input, options)`` with the correct option at ``options[answer]``."""


@dataclass(frozen=True)
class Family:
    """One generated task: its role, the concept it shares with others, and its generator."""

    name: str
    role: TaskRole
    concept: str
    """What the family tests; held-out families share a concept with a training family."""
    n_options: int
    make: Maker
    description: str

    @property
    def task_name(self) -> str:
        """The name of the family's task, e.g. ``demo-sentiment_review``."""
        return f"{SUITE_NAME}-{self.name}"


# -- helpers ----------------------------------------------------------------------------------


def _place(
    rng: random.Random, correct: str, distractors: Sequence[str], answer: int
) -> tuple[str, ...]:
    """Options with ``correct`` at position ``answer`` and the distractors, shuffled, around it."""
    options = list(distractors)
    rng.shuffle(options)
    options.insert(answer, correct)
    return tuple(options)


def _listing(options: Sequence[str]) -> str:
    """``"a, b or c"``."""
    if len(options) == 1:
        return options[0]
    return f"{', '.join(options[:-1])} or {options[-1]}"


# -- generators -------------------------------------------------------------------------------


def _sentiment_review(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
    positive = answer == 0
    product = rng.choice(words.PRODUCTS)
    adjective = rng.choice(words.REVIEW_POSITIVE if positive else words.REVIEW_NEGATIVE)
    closing = rng.choice(
        words.REVIEW_CLOSING_POSITIVE if positive else words.REVIEW_CLOSING_NEGATIVE
    )
    return f"Review: The {product} is {adjective}. {closing}", SENTIMENT_LABELS


def _sentiment_tweet(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
    positive = answer == 0
    event = rng.choice(words.TWEET_EVENTS)
    adjective = rng.choice(words.TWEET_POSITIVE if positive else words.TWEET_NEGATIVE)
    tag = rng.choice(words.TWEET_TAG_POSITIVE if positive else words.TWEET_TAG_NEGATIVE)
    verdict = rng.choice(words.VERDICT_POSITIVE if positive else words.VERDICT_NEGATIVE)
    return f"Tweet: {event} was {adjective} today. {verdict} {tag}", SENTIMENT_LABELS


def _compare_numbers(larger: bool, template: str) -> Maker:
    """Two distinct numbers in 1..99; the answer is the larger (or smaller) one."""

    def make(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
        a, b = rng.sample(range(1, 100), 2)
        high, low = max(a, b), min(a, b)
        correct, other = (high, low) if larger else (low, high)
        options = _place(rng, str(correct), [str(other)], answer)
        return template.format(a=options[0], b=options[1]), options

    return make


def _pick_category(category: str, article: str, n_options: int) -> Maker:
    """One word of ``category`` among distractors drawn from every other category."""
    targets = words.CATEGORIES[category]
    others = tuple(w for c, ws in words.CATEGORIES.items() if c != category for w in ws)

    def make(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
        options = _place(rng, rng.choice(targets), rng.sample(others, n_options - 1), answer)
        return f"Which of these is {article} {category}: {_listing(options)}?", options

    return make


def _starts_with_vowel(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
    word = rng.choice(words.VOWEL_WORDS if answer == 0 else words.CONSONANT_WORDS)
    return f"Does the word '{word}' start with a vowel?", YES_NO


def _compare_length(longer: bool) -> Maker:
    """Two words whose lengths differ by at least two letters."""
    adjective = "longer" if longer else "shorter"

    def make(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
        while True:
            a, b = rng.sample(words.WORD_POOL, 2)
            if abs(len(a) - len(b)) >= 2:
                break
        long_word, short_word = (a, b) if len(a) > len(b) else (b, a)
        correct, other = (long_word, short_word) if longer else (short_word, long_word)
        options = _place(rng, correct, [other], answer)
        return f"Which word is {adjective}: {options[0]} or {options[1]}?", options

    return make


def _parity(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
    number = 2 * rng.randrange(1, 500) if answer == 0 else 2 * rng.randrange(0, 500) + 1
    return f"Is {number} even or odd?", PARITY_LABELS


def _antonym(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
    pair = rng.choice(words.ANTONYMS)
    cue, target = pair if rng.random() < 0.5 else (pair[1], pair[0])
    others = [w for p in words.ANTONYMS if p != pair for w in p]
    options = _place(rng, target, rng.sample(others, 2), answer)
    return f"What is the opposite of '{cue}': {_listing(options)}?", options


_COUNTABLE = tuple(w for w in words.WORD_POOL if len(w) >= 4)


def _count_letters(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
    word = rng.choice(_COUNTABLE)
    first = len(word) - answer  # four consecutive counts, the right one at ``answer``
    options = tuple(str(first + i) for i in range(4))
    return f"How many letters are in the word '{word}'?", options


def _alphabetical_first(rng: random.Random, answer: int) -> tuple[str, tuple[str, ...]]:
    while True:
        chosen = rng.sample(words.WORD_POOL, 3)
        if len({w[0] for w in chosen}) == 3:
            break
    first = min(chosen)
    options = _place(rng, first, [w for w in chosen if w != first], answer)
    return f"Which word comes first in alphabetical order: {_listing(options)}?", options


# -- the families -------------------------------------------------------------------------------

TRAIN, VALIDATION, TEST = TaskRole.TRAIN, TaskRole.VALIDATION, TaskRole.TEST

FAMILIES: tuple[Family, ...] = (
    # training
    Family("sentiment_review", TRAIN, "sentiment", 2, _sentiment_review,
           "Sentiment (positive/negative) of a short product review."),
    Family("larger_number", TRAIN, "number comparison", 2,
           _compare_numbers(True, "Which number is larger: {a} or {b}?"),
           "Pick the larger of two numbers."),
    Family("animal_pick", TRAIN, "category membership", 4,
           _pick_category("animal", "an", 4),
           "Pick the animal among four words."),
    Family("starts_with_vowel", TRAIN, "letter rule", 2, _starts_with_vowel,
           "Does a word start with a vowel (yes/no)?"),
    Family("longer_word", TRAIN, "word length", 2, _compare_length(True),
           "Pick the longer of two words."),
    Family("parity", TRAIN, "parity", 2, _parity,
           "Is a number even or odd?"),
    Family("antonym", TRAIN, "antonym", 3, _antonym,
           "Pick the opposite of a word among three."),
    Family("count_letters", TRAIN, "counting", 4, _count_letters,
           "How many letters a word has."),
    Family("alphabetical_first", TRAIN, "alphabetical order", 3, _alphabetical_first,
           "Pick the word that comes first alphabetically."),
    # validation
    Family("shorter_word", VALIDATION, "word length", 2, _compare_length(False),
           "Pick the shorter of two words."),
    Family("color_pick", VALIDATION, "category membership", 3,
           _pick_category("color", "a", 3),
           "Pick the color among three words."),
    # held-out test
    Family("sentiment_tweet", TEST, "sentiment", 2, _sentiment_tweet,
           "Sentiment (positive/negative) of a short tweet."),
    Family("smaller_number", TEST, "number comparison", 2,
           _compare_numbers(False, "Which is the smaller number, {a} or {b}?"),
           "Pick the smaller of two numbers."),
    Family("fruit_pick", TEST, "category membership", 4,
           _pick_category("fruit", "a", 4),
           "Pick the fruit among four words."),
)
"""Every family of the suite, training first, then validation, then held-out test."""


def families(role: TaskRole | None = None) -> list[Family]:
    """The families playing ``role`` (all of them when ``role`` is ``None``)."""
    return [f for f in FAMILIES if role is None or f.role == TaskRole(role)]


def generate_task(family: Family, seed: int, n_examples: int = EXAMPLES_PER_TASK) -> Task:
    """Generate the task of ``family``: ``n_examples`` distinct inputs, deterministic in ``seed``.

    The generator uses its own ``random.Random(f"{seed}-{family.name}")``, never the
    global one, so tasks do not depend on each other or on anything else drawn.
    """
    if n_examples < 1:
        raise MetaloraError(f"examples per task must be positive, got {n_examples}")
    if not 2 <= family.n_options <= MAX_OPTIONS:
        raise MetaloraError(
            f"family '{family.name}' has {family.n_options} options; "
            f"must be between 2 and {MAX_OPTIONS}"
        )
    rng = random.Random(f"{seed}-{family.name}")
    answers = [i % family.n_options for i in range(n_examples)]
    rng.shuffle(answers)
    seen: set[str] = set()
    records: list[TaskRecord] = []
    for answer in answers:
        for _ in range(MAX_ATTEMPTS):
            text, options = family.make(rng, answer)
            if text not in seen:
                break
        else:
            raise MetaloraError(
                f"task '{family.task_name}': could not generate {n_examples} distinct examples"
            )
        seen.add(text)
        records.append(TaskRecord(
            task=family.task_name, input=text, output=options[answer], options=options,
            source=f"demo generator, seed {seed}, {family.task_name} #{len(records)}"))
    return Task(name=family.task_name, records=records)
