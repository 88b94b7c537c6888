"""Support/query splits and the adapt-evaluate-restore protocol."""

from __future__ import annotations

import math
import random

import pytest
import torch

from metalora.episodes import EpisodeSampler
from metalora.errors import MetaloraError
from metalora.evaluation import evaluate
from metalora.prompts import PromptEncoder
from metalora.records import Task, TaskRecord
from tests.conftest import make_config


def _task(name: str, n: int) -> Task:
    return Task(name, [TaskRecord(name, f"question {i}", "yes", ("yes", "no")) for i in range(n)])


def _sampler(tiny, **kwargs) -> EpisodeSampler:
    return EpisodeSampler(PromptEncoder(tiny.tokenizer), **kwargs)


def test_support_is_five_batches_of_two_and_query_is_the_rest(tiny):
    episode = _sampler(tiny).episode(_task("a", 31))
    assert [len(b) for b in episode.support] == [2] * 5
    assert episode.query_size == 21
    support = {r.input for b in episode.support for r in b.records}
    query = {r.input for b in episode.query for r in b.records}
    assert not support & query and len(support | query) == 31


def test_splits_are_seeded_per_task_and_the_query_can_be_capped(tiny):
    def inputs(episode):
        return [r.input for b in episode.support for r in b.records]

    task = _task("a", 40)
    first = inputs(_sampler(tiny, seed=0).episode(task))
    assert first == inputs(_sampler(tiny, seed=0).episode(task))
    assert first != inputs(_sampler(tiny, seed=1).episode(task))
    assert _sampler(tiny, query_cap=7).episode(task).query_size == 7


def test_a_task_too_small_to_evaluate_is_a_clear_error(tiny):
    with pytest.raises(MetaloraError, match="task 'small' has 10 records"):
        _sampler(tiny).episode(_task("small", 10))


def test_train_batches_come_from_the_task_and_follow_the_rng(tiny):
    sampler = _sampler(tiny, batch_size=3)
    task = _task("a", 20)
    first = sampler.train_batch(task, random.Random(5)).records
    assert first == sampler.train_batch(task, random.Random(5)).records
    assert len(first) == 3 and all(r in task.records for r in first)


def test_evaluation_adapts_then_restores_the_adapters_bit_for_bit(plugins, tmp_path):
    from metalora.runs.engine import Engine

    engine = Engine(make_config(plugins, model="tiny", learner=["lora"], adapt_lr=0.05,
                                output_dir=str(tmp_path), query_cap=6), plugins)
    learner = engine.build_learner("lora", seed=0)
    suite = engine.load_suite()
    with torch.no_grad():
        for p in learner.adapters.parameters():
            p.add_(0.01)
    before = learner.adapters.snapshot()
    adapted = []
    original_adapt = learner.adapt

    def spy(support):
        original_adapt(support)
        adapted.append(learner.adapters.snapshot())

    learner.adapt = spy
    episodes = [engine.episodes.episode(t) for t in suite.test]
    result = evaluate(learner, episodes, engine.metrics())
    assert len(adapted) == len(suite.test)
    assert any(not torch.equal(adapted[0][k], before[k]) for k in before)  # it did adapt
    after = learner.adapters.snapshot()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert set(result.macro) >= {"accuracy", "ece"}
    assert [t.task for t in result.tasks] == [t.name for t in suite.test]


def _padded_positions(episode) -> int:
    return sum(b.input_ids.numel() for b in episode.query)


@pytest.mark.parametrize("learner_name", ["pretrained", "lora", "abmll"])
def test_length_grouped_query_batches_give_the_source_order_results(plugins, tmp_path,
                                                                      learner_name):
    """Grouping changes only which prompts share a batch: every probability stays put."""
    from metalora.runs.engine import Engine

    engine = Engine(make_config(plugins, model="tiny", learner=[learner_name], adapt_lr=0.05,
                                eval_batch_size=4, sampling="mean",
                                output_dir=str(tmp_path)), plugins)
    learner = engine.build_learner(learner_name, seed=0)
    with torch.no_grad():
        for p in learner.adapters.parameters():
            p.add_(0.01 * torch.randn_like(p))
    suite = engine.load_suite()
    encoder = engine.episodes.encoder
    grouped = EpisodeSampler(encoder, eval_batch_size=4)
    source = EpisodeSampler(encoder, eval_batch_size=4, group_query_by_length=False)
    grouped_episodes = [grouped.episode(t) for t in suite.test]
    source_episodes = [source.episode(t) for t in suite.test]
    assert all(e.query_order is not None and sorted(e.query_order) == list(range(e.query_size))
               for e in grouped_episodes)
    assert sum(map(_padded_positions, grouped_episodes)) < \
        sum(map(_padded_positions, source_episodes))
    metrics = engine.metrics()
    a = evaluate(learner, grouped_episodes, metrics)
    b = evaluate(learner, source_episodes, metrics)
    for mine, theirs in zip(a.tasks, b.tasks, strict=True):
        assert torch.equal(mine.targets, theirs.targets)
        assert torch.equal(mine.option_mask, theirs.option_mask)
        torch.testing.assert_close(mine.probs, theirs.probs, rtol=0, atol=1e-5)
        assert mine.metrics == pytest.approx(theirs.metrics, abs=1e-5)


def test_bootstrap_se_of_accuracy_matches_the_binomial_formula(plugins):
    from metalora.evaluation import EvalResult, TaskResult

    gen = torch.Generator().manual_seed(0)
    tasks = []
    for name, n, p in (("a", 400, 0.3), ("b", 300, 0.8)):
        targets = torch.zeros(n, dtype=torch.long)
        right = torch.rand(n, generator=gen) < p
        probs = torch.where(right[:, None], torch.tensor([0.9, 0.1]), torch.tensor([0.1, 0.9]))
        tasks.append(TaskResult(name, {}, probs, targets, torch.ones(n, 2, dtype=torch.bool)))
    result = EvalResult(tasks=tasks)
    accuracy = {"accuracy": plugins.registry("metric").get("accuracy")()}
    se = result.bootstrap_se(accuracy, resamples=2000)["accuracy"]
    per_task = [float(t.probs.argmax(1).eq(t.targets).float().mean()) for t in tasks]
    expected = math.sqrt(sum(a * (1 - a) / t.size for a, t in zip(per_task, tasks,
                                                                  strict=True))) / len(tasks)
    assert se == pytest.approx(expected, rel=0.08)
    assert result.bootstrap_se(accuracy, resamples=50) == result.bootstrap_se(accuracy,
                                                                              resamples=50)


def test_each_rank_hears_of_every_task_once_under_torchrun(plugins, tmp_path):
    """Rank 0 of 2 evaluates every other task; its progress still counts all of them."""
    from metalora.distributed import Distributed
    from metalora.evaluation import evaluate_across_ranks
    from metalora.runs.engine import Engine

    engine = Engine(make_config(plugins, model="tiny", learner=["pretrained"],
                                output_dir=str(tmp_path), query_cap=4), plugins)
    learner = engine.build_learner("pretrained", seed=0)
    episodes = [engine.episodes.episode(t) for t in engine.load_suite().test]
    assert len(episodes) >= 3
    metrics = engine.metrics()
    everything = evaluate(learner, episodes, metrics).tasks

    class RankZeroOfTwo(Distributed):
        def gather_dealt(self, mine, total):  # the other rank's share, as if gathered
            assert len(mine) == len(episodes[0::2])
            return [mine[i // 2] if i % 2 == 0 else everything[i] for i in range(total)]

    heard: list[str] = []
    result = evaluate_across_ranks(RankZeroOfTwo(rank=0, world_size=2), learner, episodes,
                                   metrics, on_task=heard.append)
    names = [e.task for e in episodes]
    assert heard[: len(episodes[0::2])] == names[0::2]  # its own, as each ends
    assert sorted(heard) == sorted(names)
    assert [t.task for t in result.tasks] == names
