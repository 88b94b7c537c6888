"""In-context learning (``in_context = k``): the first k support examples, with their
answers, before each query's prompt; zero demonstrations is the zero-shot prompt."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

import metalora.api as ml
from metalora.episodes import EpisodeSampler
from metalora.prompts import DEMONSTRATION_SEPARATOR, PromptEncoder, format_prompt
from metalora.records import Task, TaskRecord


def _records(n: int, name: str = "t") -> list[TaskRecord]:
    return [TaskRecord(name, f"Is {i} even or odd?", "even" if i % 2 == 0 else "odd",
                       ("even", "odd")) for i in range(n)]


def test_no_demonstrations_is_the_zero_shot_prompt(tiny):
    encoder = PromptEncoder(tiny.tokenizer)
    for record in _records(3):
        assert encoder.prompt_ids_after(record, []) == (encoder.prompt_ids(record), 0)
    task = Task("t", _records(30))
    plain = EpisodeSampler(encoder).episode(task)
    zero = EpisodeSampler(encoder, in_context=0).episode(task)
    assert zero.demonstrations is None
    for a, b in zip(plain.query, zero.query, strict=True):
        assert torch.equal(a.input_ids, b.input_ids)


def test_demonstrations_are_the_first_support_examples_with_their_answers(tiny):
    encoder = PromptEncoder(tiny.tokenizer)
    task = Task("t", _records(30))
    episode = EpisodeSampler(encoder, in_context=3).episode(task)
    support = [r for b in episode.support for r in b.records]
    query = episode.query_records()[0]
    expected = DEMONSTRATION_SEPARATOR.join(
        [f"{format_prompt(d)} {'AB'[d.answer_index]}" for d in support[:3]]
        + [format_prompt(query)])
    batch = next(b for b in episode.query if query in b.records)
    row = batch.records.index(query)
    ids = batch.input_ids[row, : int(batch.attention_mask[row].sum())].tolist()
    assert ids == encoder._encode(expected, special=True) + encoder.prefix_ids
    assert episode.demonstrations == [3] * episode.query_size


def test_demonstrations_that_do_not_fit_are_dropped_from_the_front(tiny):
    encoder = PromptEncoder(tiny.tokenizer, max_length=512)
    demos, query = _records(3), _records(4)[3]
    one = len(encoder.prompt_ids_after(query, demos[2:])[0])
    encoder.max_length = one  # room for the query and the last demonstration only
    ids, given = encoder.prompt_ids_after(query, demos)
    assert given == 1 and ids == encoder.prompt_ids_after(query, demos[2:])[0]
    encoder.max_length = len(encoder.prompt_ids(query))  # room for no demonstration
    assert encoder.prompt_ids_after(query, demos) == (encoder.prompt_ids(query), 0)


def test_in_context_changes_the_pretrained_models_predictions_and_is_recorded(
        plugins, finished_tiny_run):
    run_dir = finished_tiny_run.run_dir
    quiet = Console(quiet=True)
    plain = ml.evaluate(run_dir, learner=["pretrained"], seeds=[0], plugins=plugins,
                        console=quiet)
    icl = ml.evaluate(run_dir, learner=["pretrained"], seeds=[0], plugins=plugins,
                      console=quiet, settings={"in_context": 4})
    zero = ml.evaluate(run_dir, learner=["pretrained"], seeds=[0], plugins=plugins,
                       console=quiet, settings={"in_context": 0})
    for a, b, c in zip(plain.results["pretrained"][0].test.tasks,
                       icl.results["pretrained"][0].test.tasks,
                       zero.results["pretrained"][0].test.tasks, strict=True):
        assert not torch.allclose(a.probs, b.probs)
        assert torch.equal(a.probs, c.probs)
    lines = [json.loads(line) for line in
             (icl.run_dir / "pretrained" / "seed-0" / "predictions.jsonl").read_text()
             .splitlines()]
    assert {line["demonstrations"] for line in lines} == {4}
    protocol = json.loads((icl.run_dir / "metrics.json").read_text())["protocol"]
    assert protocol["changed_settings"] == {"in_context": 4}


def test_adapt_puts_the_support_examples_in_the_prompt_too(plugins, finished_tiny_run):
    records = [{"input": r.input, "output": r.output, "options": list(r.options)}
               for r in _records(8)]
    plain = ml.adapt(finished_tiny_run.run_dir, records[:4], records[4:], learner="pretrained",
                     plugins=plugins)
    icl = ml.adapt(finished_tiny_run.run_dir, records[:4], records[4:], learner="pretrained",
                   plugins=plugins, settings={"in_context": 2})
    assert [p.demonstrations for p in icl.predictions] == [2] * 4
    assert [p.probs for p in plain.predictions] != [p.probs for p in icl.predictions]


def test_in_context_must_not_be_negative(plugins):
    from metalora.errors import MetaloraError

    with pytest.raises(MetaloraError, match="in_context"):
        ml.run_spec(plugins=plugins, learner="pretrained", tasks="demo", model="tiny",
                    in_context=-1)
