"""Learning actually happens: a short seeded lora run beats the pretrained model."""

from __future__ import annotations

from metalora.engine import Engine
from tests.conftest import make_config

# A short run on the tiny random-init model: lora trains on the first demo
# training family (product-review sentiment) only; the held-out tweet-sentiment
# family shares its closing verdicts, so what lora learns transfers.
SHORT_RUN = dict(
    model="tiny", tasks="demo", learner=["pretrained", "lora"], seeds=[0], epochs=40, lr=1e-2,
    batch_size=8, train_loss="options", max_train_tasks=1, eval_every=0, plots=False,
    tensorboard=False,
)


def test_lora_beats_pretrained_on_held_out_demo_tasks_after_a_short_run(plugins, tmp_path):
    summary = Engine(make_config(plugins, output_dir=str(tmp_path), **SHORT_RUN),
                     plugins).execute()
    macro = summary.summary()
    pretrained, lora = macro["pretrained"]["accuracy"][0], macro["lora"]["accuracy"][0]
    assert lora > pretrained + 0.1, (pretrained, lora)

    def sentiment(learner: str) -> float:
        (result,) = summary.results[learner]
        return next(t.metrics["accuracy"] for t in result.test.tasks
                    if t.task == "demo-sentiment_tweet")

    assert sentiment("lora") >= sentiment("pretrained") + 0.3
