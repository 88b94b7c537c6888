"""Common random numbers: at one seed the task-structured learners see the same batches.

Every task-structured learner shuffles the task order and draws its
``inner_steps`` batches per task from the learner's main stream
(``context.rng``); a draw only some learners make (ABMLL's outer batch, MAML's
and Meta-SGD's query batch) comes from ``context.stream(...)``, so the main
stream stays where every other learner has it and paired comparisons between
learners compare them on the same batches.
"""

from __future__ import annotations

import random

import pytest

from metalora.episodes import EpisodeSampler
from metalora.runs import setup as run_setup
from metalora.runs.engine import Engine
from tests.conftest import make_config

TASK_STRUCTURED = ("structured-lora", "reptile", "maml", "abmll", "metasgd")


def _main_stream_draws(plugins, tmp_path, monkeypatch, learner: str,
                       seed: int = 3) -> tuple[list, list]:
    """The (task, records) batches ``learner`` drew from its main stream, and from others."""
    mains: list[random.Random] = []
    real_seed = run_setup.seed_everything

    def seed_and_keep(value: int) -> random.Random:
        rng = real_seed(value)
        mains.append(rng)
        return rng

    main, other = [], []
    real_draw = EpisodeSampler.train_batch

    def draw(self, task, rng):
        records = rng.sample(task.records, min(self.batch_size, len(task.records)))
        # the same draw again from a copy, so that the learner gets exactly what was recorded
        (main if any(rng is m for m in mains) else other).append(
            (task.name, tuple(r.input for r in records)))
        return real_draw(self, task, rng_replay(rng, records))

    monkeypatch.setattr(run_setup, "seed_everything", seed_and_keep)
    monkeypatch.setattr(EpisodeSampler, "train_batch", draw)
    config = make_config(plugins, model="tiny", tasks="demo", learner=[learner], seeds=[seed],
                         epochs=2, max_train_tasks=3, eval_every=0, max_eval_tasks=1,
                         query_cap=2, adapt_steps=0, plots=False, tensorboard=False,
                         output_dir=str(tmp_path / learner))
    Engine(config, plugins).execute()
    return main, other


class rng_replay:  # noqa: N801 - used like a function
    """An rng whose next ``sample`` returns ``records`` (the draw already taken)."""

    def __init__(self, rng: random.Random, records: list) -> None:
        self.rng, self.records = rng, records

    def sample(self, population, k):
        return list(self.records)


@pytest.fixture(scope="module")
def draws(plugins, tmp_path_factory) -> dict[str, tuple[list, list]]:
    out = {}
    for learner in TASK_STRUCTURED:
        with pytest.MonkeyPatch.context() as monkeypatch:
            out[learner] = _main_stream_draws(plugins, tmp_path_factory.mktemp("crn"),
                                              monkeypatch, learner)
    return out


def test_every_task_structured_learner_draws_the_same_main_stream_batches(draws) -> None:
    reference = draws["reptile"][0]
    assert len(reference) == 2 * 3 * 5  # 2 epochs x 3 tasks x 5 inner steps
    for learner in TASK_STRUCTURED:
        assert draws[learner][0] == reference, learner


def test_the_extra_batches_come_from_streams_of_their_own(draws) -> None:
    assert draws["reptile"][1] == [] and draws["structured-lora"][1] == []
    for learner in ("abmll", "maml", "metasgd"):  # one outer (query) batch per task and epoch
        assert len(draws[learner][1]) == 2 * 3, learner
    # from the task being visited, and different from epoch to epoch
    tasks = [task for task, _ in draws["abmll"][1]]
    assert sorted(tasks[:3]) == sorted(tasks[3:])
    assert draws["abmll"][1][:3] != draws["abmll"][1][3:]


def test_a_stream_depends_only_on_the_seed_and_its_keys() -> None:
    from metalora.interfaces import LearnerContext

    def context(seed: int) -> LearnerContext:
        return LearnerContext(model=None, batches=None, protocol=None,  # type: ignore[arg-type]
                              adapter=None, settings=None, rng=random.Random(seed), seed=seed)

    a, b = context(1), context(1)
    a.rng.random()  # the main stream's position does not matter
    assert a.stream("outer", 0, "t").random() == b.stream("outer", 0, "t").random()
    assert a.stream("outer", 0, "t").random() != a.stream("outer", 1, "t").random()
    assert a.stream("outer", 0, "t").random() != context(2).stream("outer", 0, "t").random()


def test_the_fields_of_earlier_versions_still_read_with_a_deprecation_warning(plugins) -> None:
    from metalora.runs.engine import Engine as RunEngine

    engine = RunEngine(make_config(plugins, model="tiny", learner=["lora"]), plugins)
    engine.load_suite()
    learner = engine.build_learner("lora", 0)
    try:
        context = learner.context
        with pytest.warns(DeprecationWarning, match="LearnerContext.episodes is deprecated; "
                                                    "use batches"):
            assert context.episodes is context.batches
        with pytest.warns(DeprecationWarning, match="use ranks"):
            assert context.distributed is context.ranks
        with pytest.warns(DeprecationWarning, match="use protocol"):
            assert context.run.adapt_lr == context.protocol.adapt_lr
        with pytest.warns(DeprecationWarning, match="batches.encode"):
            assert context.encoder is context.batches.encoder
        assert context.adapter_config == context.adapter
    finally:
        learner.adapters.remove()
