"""Tests of the built-in ``demo`` suite (generated multiple-choice task families)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

import metalora_plugins.demo as demo
from metalora.errors import MetaloraError
from metalora.interfaces import DataOptions, TaskSampler
from metalora.plugins import PluginManager
from metalora.records import MAX_OPTIONS, Suite, Task, TaskRole
from metalora_plugins.demo import EXAMPLES_PER_TASK, FAMILIES, DemoSuite, generate_task, words

ROLES = (TaskRole.TRAIN, TaskRole.VALIDATION, TaskRole.TEST)


@pytest.fixture(scope="module")
def suite() -> Suite:
    """The suite generated with seed 0."""
    return DemoSuite().load(DataOptions(seed=0))


def all_tasks(suite: Suite) -> list[Task]:
    """Every task of ``suite``, whatever its role."""
    return [t for role in ROLES for t in suite.tasks(role)]


def by_name(suite: Suite) -> dict[str, Task]:
    """The tasks of ``suite`` by name."""
    return {t.name: t for t in all_tasks(suite)}


def test_is_a_task_sampler_without_external_data() -> None:
    sampler = DemoSuite()
    assert isinstance(sampler, TaskSampler)
    assert sampler.name == "demo"
    assert sampler.description
    assert sampler.needs_data is False


def test_roles_split_by_family() -> None:
    roles = DemoSuite().roles()
    assert set(roles) == set(ROLES)
    assert [len(roles[r]) for r in ROLES] == [9, 2, 3]
    names = [n for r in ROLES for n in roles[r]]
    assert len(names) == len(set(names)), "a task plays two roles"
    assert all(re.fullmatch(r"demo-[a-z_]+", n) for n in names)
    for family in FAMILIES:
        assert family.task_name in roles[family.role]


def test_load_matches_roles(suite: Suite) -> None:
    roles = DemoSuite().roles()
    assert suite.name == "demo"
    for role in ROLES:
        assert [t.name for t in suite.tasks(role)] == roles[role]


def test_held_out_families_share_a_concept_with_training() -> None:
    train_concepts = {f.concept for f in FAMILIES if f.role == TaskRole.TRAIN}
    for family in FAMILIES:
        if family.role != TaskRole.TRAIN:
            assert family.concept in train_concepts, family.name


def test_every_record_is_valid(suite: Suite) -> None:
    for task in all_tasks(suite):
        assert len(task) == EXAMPLES_PER_TASK
        assert len({r.input for r in task}) == len(task), f"{task.name} repeats an input"
        for record in task:
            assert record.task == task.name
            assert 2 <= len(record.options) <= MAX_OPTIONS
            assert len(set(record.options)) == len(record.options)
            assert record.output in record.options
            assert all(isinstance(o, str) and o for o in record.options)
            assert 0 < len(record.input) < 120


def test_same_seed_same_records() -> None:
    first = DemoSuite().load(DataOptions(seed=3))
    second = DemoSuite().load(DataOptions(seed=3))
    assert [t.records for t in all_tasks(first)] == [t.records for t in all_tasks(second)]


def test_different_seeds_differ(suite: Suite) -> None:
    other = DemoSuite().load(DataOptions(seed=1))
    for a, b in zip(all_tasks(suite), all_tasks(other), strict=True):
        assert a.name == b.name
        assert a.records != b.records, a.name


def test_generation_does_not_use_the_global_rng() -> None:
    import random

    random.seed(0)
    first = generate_task(FAMILIES[0], seed=5).records
    random.seed(123)
    random.random()
    assert generate_task(FAMILIES[0], seed=5).records == first


def test_answer_positions_are_uniform(suite: Suite) -> None:
    for task in all_tasks(suite):
        assert len(task) >= 40
        k = len(task.records[0].options)
        counts = Counter(r.answer_index for r in task)
        assert max(counts.values()) / len(task) <= 0.6, (task.name, counts)
        assert set(counts) == set(range(k)), (task.name, counts)
        assert max(counts.values()) - min(counts.values()) <= 1, (task.name, counts)


def test_two_option_families_are_class_balanced(suite: Suite) -> None:
    for task in all_tasks(suite):
        if len(task.records[0].options) != 2:
            continue
        outputs = Counter(r.output for r in task)
        if len({r.options for r in task}) == 1:  # a label family: the classes are the labels
            assert set(outputs) == set(task.records[0].options), task.name
            assert abs(outputs[task.records[0].options[0]] - len(task) / 2) <= 1, task.name
        else:  # an item family: the class is which item (first or second) is right
            first = sum(r.answer_index == 0 for r in task)
            assert abs(first - len(task) / 2) <= 1, task.name


def test_category_lists_are_disjoint() -> None:
    seen: dict[str, str] = {}
    for category, members in words.CATEGORIES.items():
        for word in members:
            assert word not in seen, f"{word!r} is both {seen[word]} and {category}"
            seen[word] = category
    antonym_words = [w for pair in words.ANTONYMS for w in pair]
    assert len(antonym_words) == len(set(antonym_words))


def test_answers_are_correct(suite: Suite) -> None:
    tasks = by_name(suite)

    def numbers(record):
        return [int(o) for o in record.options]

    for r in tasks["demo-larger_number"]:
        assert int(r.output) == max(numbers(r))
    for r in tasks["demo-smaller_number"]:
        assert int(r.output) == min(numbers(r))
    for r in tasks["demo-parity"]:
        n = int(re.search(r"\d+", r.input).group())
        assert r.output == ("even" if n % 2 == 0 else "odd")
    for r in tasks["demo-starts_with_vowel"]:
        word = re.search(r"'(\w+)'", r.input).group(1)
        assert r.output == ("yes" if word[0] in "aeiou" else "no")
    for r in tasks["demo-count_letters"]:
        word = re.search(r"'(\w+)'", r.input).group(1)
        assert int(r.output) == len(word)
    for r in tasks["demo-longer_word"]:
        assert len(r.output) == max(len(o) for o in r.options)
    for r in tasks["demo-shorter_word"]:
        assert len(r.output) == min(len(o) for o in r.options)
    for r in tasks["demo-alphabetical_first"]:
        assert r.output == min(r.options)
    antonyms = dict(words.ANTONYMS) | {b: a for a, b in words.ANTONYMS}
    for r in tasks["demo-antonym"]:
        cue = re.search(r"'(\w+)'", r.input).group(1)
        assert r.output == antonyms[cue]
    for name, category in [("animal_pick", "animal"), ("color_pick", "color"),
                           ("fruit_pick", "fruit")]:
        for r in tasks[f"demo-{name}"]:
            members = [o for o in r.options if o in words.CATEGORIES[category]]
            assert members == [r.output]
            assert all(o in r.input for o in r.options)
    for name in ("demo-sentiment_review", "demo-sentiment_tweet"):
        assert {r.options for r in tasks[name]} == {("positive", "negative")}


def test_examples_per_task_is_configurable() -> None:
    small = DemoSuite(examples_per_task=8).load(DataOptions(seed=0))
    assert all(len(t) == 8 for t in all_tasks(small))
    with pytest.raises(MetaloraError):
        generate_task(FAMILIES[0], seed=0, n_examples=0)


def test_registered_through_the_hook() -> None:
    pm = PluginManager(load_entry_points=False)
    pm.register(demo, name="demo-test")
    sampler = pm.registry("suite").get("demo")
    assert isinstance(sampler, DemoSuite)
    assert "demo" in pm.registry("suite").names()
