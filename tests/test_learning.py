"""Learning actually happens: short seeded runs beat the pretrained model on held-out tasks."""

from __future__ import annotations

import pytest

from metalora.runs.engine import Engine
from metalora.runs.results import RunSummary
from tests.conftest import make_config

LEARNERS = ["lora", "structured-lora", "reptile", "abmll"]

# A short run on the tiny random-init model: each learner trains on the first
# demo training family (product-review sentiment) only; the held-out
# tweet-sentiment family shares the reviews' closing verdicts, so what is
# learned transfers. Learning rates are raised for the tiny model.
SHORT_RUN = dict(
    model="tiny", tasks="demo", learner=["pretrained", *LEARNERS], seeds=[0], epochs=40,
    lr=1e-2, inner_lr=1e-2, outer_lr=1e-2, batch_size=8, train_loss="options",
    max_train_tasks=1, eval_every=0, plots=False, tensorboard=False, adapt_lr=1e-5,
)


@pytest.fixture(scope="module")
def short_run(plugins, tmp_path_factory) -> RunSummary:
    out = tmp_path_factory.mktemp("learning")
    return Engine(make_config(plugins, output_dir=str(out), **SHORT_RUN), plugins).execute()


def _task_accuracy(summary: RunSummary, learner: str, task: str) -> float:
    (result,) = summary.results[learner]
    return next(t.metrics["accuracy"] for t in result.test.tasks if t.task == task)


# What the held-out tweet family gains over pretrained (20 queries). The meta-learners
# transfer the reviews' rule clearly; lora and structured-lora, 200 AdamW steps at 1e-2 on
# one task, overfit it, and how much of it survives on tweets depends on the CPU's float
# rounding (+0.1 on an AMD EPYC, +0.2 or more elsewhere): for them only "no worse".
TWEET_GAIN = {"lora": 0.0, "structured-lora": 0.0, "reptile": 0.2, "abmll": 0.2}


@pytest.mark.parametrize("learner", LEARNERS)
def test_a_short_run_beats_pretrained_on_held_out_demo_tasks(short_run, learner):
    macro = short_run.summary()
    pretrained, trained = macro["pretrained"]["accuracy"][0], macro[learner]["accuracy"][0]
    assert trained >= pretrained + 0.05, (pretrained, trained)
    tweet = "demo-sentiment_tweet"
    assert (_task_accuracy(short_run, learner, tweet)
            >= _task_accuracy(short_run, "pretrained", tweet) + TWEET_GAIN[learner])


def test_a_nan_loss_in_the_first_epoch_keeps_the_initial_adapters(plugins, tmp_path,
                                                                  monkeypatch):
    import torch

    from metalora import single_pair
    from metalora.errors import TrainingDiverged
    from metalora.runs.rundir import load_adapters

    real = single_pair.answer_loss
    monkeypatch.setattr(single_pair, "answer_loss",
                        lambda *a, **k: real(*a, **k) * float("nan"))
    config = make_config(plugins, model="tiny", learner=["lora"], epochs=2, plots=False,
                         tensorboard=False, output_dir=str(tmp_path), run_name="nan")
    with pytest.raises(TrainingDiverged, match="epoch 0, task -, step 0; no epoch had finished"):
        Engine(config, plugins).execute()
    saved = load_adapters(tmp_path / "nan" / "lora" / "seed-0" / "adapters-initial.safetensors")
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
    assert all(t.eq(0).all() for name, t in saved.items() if name.endswith(".B"))
