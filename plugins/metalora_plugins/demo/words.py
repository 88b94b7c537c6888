"""Word lists for the generated ``demo`` suite.

Every list is a tuple (never a set) so that generation is deterministic.
The category lists are pairwise disjoint and avoid words that belong to two
categories in everyday English (no "orange", "lime", "plum", "salmon", ...),
so that "which of these is a fruit?" always has exactly one right answer.
"""

from __future__ import annotations

ANIMALS: tuple[str, ...] = (
    "dog", "cat", "horse", "cow", "sheep", "goat", "lion", "tiger", "bear", "wolf",
    "fox", "rabbit", "mouse", "deer", "zebra", "camel", "monkey", "whale", "shark", "frog",
    "snake", "eagle", "owl", "duck", "goose", "donkey", "giraffe", "hippo", "moose", "panda",
)
FRUITS: tuple[str, ...] = (
    "apple", "banana", "grape", "mango", "pear", "pineapple", "strawberry", "blueberry",
    "raspberry", "watermelon", "melon", "papaya", "apricot", "fig", "coconut", "guava",
    "lychee", "pomegranate", "nectarine", "tangerine", "cranberry", "gooseberry",
)
COLORS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white", "gray",
    "teal", "maroon", "crimson", "indigo", "magenta", "scarlet", "beige", "turquoise",
)
FURNITURE: tuple[str, ...] = (
    "chair", "table", "sofa", "desk", "bed", "shelf", "stool", "cabinet", "dresser", "bench",
)
TOOLS: tuple[str, ...] = (
    "hammer", "wrench", "saw", "screwdriver", "shovel", "rake", "chisel", "pliers", "ladder",
)
VEHICLES: tuple[str, ...] = (
    "car", "bus", "truck", "bicycle", "train", "boat", "plane", "tractor", "scooter", "van",
)
CLOTHING: tuple[str, ...] = (
    "shirt", "sock", "hat", "coat", "scarf", "glove", "boot", "dress", "skirt", "sweater",
)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animal": ANIMALS,
    "fruit": FRUITS,
    "color": COLORS,
    "furniture": FURNITURE,
    "tool": TOOLS,
    "vehicle": VEHICLES,
    "clothing": CLOTHING,
}
"""Disjoint word categories, by singular category name."""

VOWEL_WORDS: tuple[str, ...] = (
    "apple", "anchor", "ant", "arrow", "actor", "angel", "axe", "artist", "apron", "atlas",
    "elephant", "eagle", "engine", "egg", "elbow", "echo", "ember", "envelope", "easel",
    "island", "igloo", "ink", "iron", "insect", "idea", "icicle", "ocean", "octopus",
    "onion", "owl", "oven", "otter", "opera", "orbit", "oyster", "umbrella", "uncle",
    "unicorn", "usher", "utensil",
)
"""Words starting with a, e, i, o or u."""

CONSONANT_WORDS: tuple[str, ...] = (
    "table", "chair", "river", "garden", "basket", "candle", "dragon", "forest", "guitar",
    "hammer", "jacket", "kitten", "ladder", "mirror", "needle", "pencil", "rabbit", "saddle",
    "tiger", "window", "zebra", "bottle", "carpet", "donkey", "feather", "hat", "mountain",
    "noodle", "pillow", "rocket", "spoon", "tomato", "violin", "wagon", "cactus", "giraffe",
    "helmet", "parrot", "shovel", "lantern",
)
"""Words starting with a consonant other than ``y`` (whose status is ambiguous)."""


def _unique(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """The words of ``groups`` in order, each once."""
    seen: dict[str, None] = {}
    for group in groups:
        for word in group:
            seen.setdefault(word, None)
    return tuple(seen)


WORD_POOL: tuple[str, ...] = tuple(
    w
    for w in _unique(*CATEGORIES.values(), VOWEL_WORDS, CONSONANT_WORDS)
    if w.isalpha() and w.islower()
)
"""Single lowercase words for the string-rule families (length, order, counting)."""

ANTONYMS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"),
    ("high", "low"), ("give", "take"), ("wet", "dry"), ("rich", "poor"), ("strong", "weak"),
    ("loud", "quiet"), ("long", "short"), ("thick", "thin"), ("clean", "dirty"),
    ("true", "false"), ("win", "lose"), ("push", "pull"), ("buy", "sell"),
    ("laugh", "cry"), ("inside", "outside"), ("first", "last"), ("brave", "cowardly"),
    ("wide", "narrow"), ("sweet", "sour"), ("love", "hate"), ("day", "night"),
    ("left", "right"), ("near", "far"), ("safe", "dangerous"), ("cheap", "expensive"),
    ("friend", "enemy"), ("question", "answer"), ("begin", "end"), ("arrive", "leave"),
    ("remember", "forget"), ("accept", "refuse"),
)
"""Antonym pairs; every word occurs in exactly one pair."""

# -- sentiment ---------------------------------------------------------------------------------

PRODUCTS: tuple[str, ...] = (
    "blender", "kettle", "backpack", "lamp", "charger", "jacket", "phone case", "vacuum",
    "toaster", "headset", "keyboard", "mattress", "umbrella", "water bottle", "printer",
    "tent", "drill", "speaker", "camera", "watch",
)
REVIEW_POSITIVE: tuple[str, ...] = (
    "sturdy", "reliable", "excellent", "well made", "comfortable", "fast", "quiet",
    "great value", "easy to use", "durable",
)
REVIEW_NEGATIVE: tuple[str, ...] = (
    "flimsy", "unreliable", "terrible", "poorly made", "uncomfortable", "slow", "noisy",
    "overpriced", "hard to use", "cheaply built",
)
VERDICT_POSITIVE: tuple[str, ...] = ("Love it.", "So good.", "Ten out of ten.", "Very happy.")
"""Closing verdicts shared by reviews (training) and tweets (test): the shared structure."""
VERDICT_NEGATIVE: tuple[str, ...] = ("Hate it.", "So bad.", "Zero out of ten.", "Very upset.")
REVIEW_CLOSING_POSITIVE: tuple[str, ...] = (
    "Would buy again.", "Highly recommend.", "Five stars.", *VERDICT_POSITIVE,
)
REVIEW_CLOSING_NEGATIVE: tuple[str, ...] = (
    "Would not buy again.", "Do not recommend.", "One star.", "Returned it.", *VERDICT_NEGATIVE,
)

TWEET_EVENTS: tuple[str, ...] = (
    "my commute", "the concert", "lunch", "the weather", "my exam", "the game", "work",
    "the party", "my flight", "the meeting", "brunch", "the movie",
)
TWEET_POSITIVE: tuple[str, ...] = (
    "amazing", "wonderful", "so fun", "perfect", "awesome", "lovely", "fantastic",
    "the best",
)
TWEET_NEGATIVE: tuple[str, ...] = (
    "awful", "horrible", "so boring", "a disaster", "the worst", "miserable", "dreadful",
    "annoying",
)
TWEET_TAG_POSITIVE: tuple[str, ...] = ("#blessed", ":)", "#happy", "#grateful")
TWEET_TAG_NEGATIVE: tuple[str, ...] = ("#fail", ":(", "#ugh", "#annoyed")
