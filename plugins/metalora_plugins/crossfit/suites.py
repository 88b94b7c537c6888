"""The task lists of the CrossFit/MetaICL suites, embedded as constants.

``cls45`` and ``cls23`` are copied from the paper's appendix A.2 (the cls-45
and cls-23 settings of Ye et al. 2021, already filtered by the authors to
multiple-choice tasks with at most four options). ``nli``, ``para`` and
``mcqa`` are MetaICL's settings (Min et al. 2022) ``non_nli_to_nli``,
``non_paraphrase_to_paraphrase`` and ``qa_to_qa``: their test lists and
their training lists are copied verbatim from MetaICL's ``config/*.json``.

Roles, for every suite:

* **train**: the setting's training tasks. For ``nli``, ``para`` and
  ``mcqa`` this is MetaICL's train list of that setting, minus any task that
  is also one of its test tasks (MetaICL's ``non_nli_to_nli`` lists ``sick``
  on both sides; it is kept as a test task only, so nothing leaks).
  Training tasks whose examples have more than four options (e.g.
  ``dbpedia_14``, ``trec``) are removed at load time, and the removal is
  reported in :attr:`Suite.notes`.
* **validation**: the test tasks again, read from their k-shot files (see
  :mod:`metalora_plugins.crossfit.reader`): the paper validates and tests
  on the same 15 cls-45 tasks, and the benchmark data ships only the k-shot
  files of those tasks, holding their test splits back.
* **test**: the test tasks, read from their held-out test split where one is
  available.

The lists are small public facts; they are embedded here so that importing
the plugin never reads a data directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from metalora import TaskRole

# -- the paper, appendix A.2 ------------------------------------------------------------------

CLS45_TRAIN: tuple[str, ...] = (
    "superglue-rte", "tweet_eval-sentiment", "glue-rte", "superglue-wsc", "glue-mrpc",
    "tweet_eval-stance_hillary", "tweet_eval-offensive", "hatexplain", "glue-cola", "sick",
    "paws", "ethos-sexual_orientation", "glue-qqp", "tweet_eval-emotion", "sms_spam",
    "health_fact", "glue-mnli", "imdb", "ethos-disability", "glue-wnli", "scitail", "glue-sst2",
    "tweet_eval-stance_abortion", "tweet_eval-stance_climate", "glue-qnli",
    "ethos-directed_vs_generalized", "ade_corpus_v2-classification", "hate_speech_offensive",
    "superglue-wic", "google_wellformed_query", "tweet_eval-irony", "ethos-gender",
    "rotten_tomatoes", "kilt_fever",
)
"""cls-45 training tasks (34), in the paper's order."""

CLS45_TEST: tuple[str, ...] = (
    "tweet_eval-stance_feminist", "ethos-national_origin", "tweet_eval-hate", "ag_news", "anli",
    "hate_speech18", "poem_sentiment", "climate_fever", "medical_questions_pairs",
    "tweet_eval-stance_atheism", "ethos-race", "ethos-religion", "superglue-cb", "wiki_qa",
    "yelp_polarity",
)
"""cls-45 validation and test tasks (15), in the paper's order."""

CLS23_TRAIN: tuple[str, ...] = (
    "blimp-ellipsis_n_bar_2", "blimp-sentential_negation_npi_scope", "crows_pairs", "hellaswag",
    "openbookqa", "piqa", "quartz-no_knowledge", "sciq", "ethos-disability",
    "ethos-sexual_orientation", "glue-cola", "glue-mnli", "glue-mrpc", "glue-qqp", "glue-rte",
    "glue-wnli", "hatexplain", "health_fact", "imdb", "paws", "sick", "sms_spam",
    "superglue-rte", "superglue-wsc", "tweet_eval-emotion", "tweet_eval-offensive",
    "tweet_eval-sentiment", "tweet_eval-stance_hillary",
)
"""cls-23 training tasks (28), in the paper's order. Its test tasks are :data:`CLS45_TEST`."""

# -- MetaICL settings (config/<setting>.json) -------------------------------------------------

NON_NLI_TO_NLI_TRAIN: tuple[str, ...] = (
    "ade_corpus_v2-classification", "ag_news", "amazon_polarity", "circa", "climate_fever",
    "dbpedia_14", "discovery", "emo", "emotion", "ethos-directed_vs_generalized",
    "ethos-disability", "ethos-gender", "ethos-national_origin", "ethos-race", "ethos-religion",
    "ethos-sexual_orientation", "financial_phrasebank", "glue-cola", "glue-mrpc", "glue-qqp",
    "glue-sst2", "google_wellformed_query", "hate_speech18", "hate_speech_offensive",
    "hatexplain", "health_fact", "imdb", "kilt_fever", "liar", "medical_questions_pairs",
    "onestop_english", "paws", "poem_sentiment", "rotten_tomatoes", "sick", "sms_spam",
    "superglue-wic", "superglue-wsc", "tab_fact", "trec", "trec-finegrained",
    "tweet_eval-emoji", "tweet_eval-emotion", "tweet_eval-hate", "tweet_eval-irony",
    "tweet_eval-offensive", "tweet_eval-sentiment", "tweet_eval-stance_abortion",
    "tweet_eval-stance_atheism", "tweet_eval-stance_climate", "tweet_eval-stance_feminist",
    "tweet_eval-stance_hillary", "wiki_qa", "yahoo_answers_topics", "yelp_polarity",
)
"""MetaICL ``non_nli_to_nli`` train list (55 tasks, verbatim)."""

NON_NLI_TO_NLI_TEST: tuple[str, ...] = (
    "anli", "glue-mnli", "glue-qnli", "glue-rte", "glue-wnli", "scitail", "sick", "superglue-cb",
)
"""MetaICL ``non_nli_to_nli`` test list (8 tasks)."""

NON_PARAPHRASE_TO_PARAPHRASE_TRAIN: tuple[str, ...] = (
    "ade_corpus_v2-classification", "ag_news", "amazon_polarity", "anli", "circa",
    "climate_fever", "dbpedia_14", "discovery", "emo", "emotion",
    "ethos-directed_vs_generalized", "ethos-disability", "ethos-gender", "ethos-national_origin",
    "ethos-race", "ethos-religion", "ethos-sexual_orientation", "financial_phrasebank",
    "glue-cola", "glue-mnli", "glue-qnli", "glue-rte", "glue-sst2", "glue-wnli",
    "google_wellformed_query", "hate_speech18", "hate_speech_offensive", "hatexplain",
    "health_fact", "imdb", "kilt_fever", "liar", "onestop_english", "poem_sentiment",
    "rotten_tomatoes", "scitail", "sick", "sms_spam", "superglue-cb", "superglue-rte",
    "superglue-wic", "superglue-wsc", "tab_fact", "trec", "trec-finegrained",
    "tweet_eval-emoji", "tweet_eval-emotion", "tweet_eval-hate", "tweet_eval-irony",
    "tweet_eval-offensive", "tweet_eval-sentiment", "tweet_eval-stance_abortion",
    "tweet_eval-stance_atheism", "tweet_eval-stance_climate", "tweet_eval-stance_feminist",
    "tweet_eval-stance_hillary", "wiki_qa", "yahoo_answers_topics", "yelp_polarity",
)
"""MetaICL ``non_paraphrase_to_paraphrase`` train list (59 tasks, verbatim)."""

NON_PARAPHRASE_TO_PARAPHRASE_TEST: tuple[str, ...] = (
    "glue-mrpc", "glue-qqp", "medical_questions_pairs", "paws",
)
"""MetaICL ``non_paraphrase_to_paraphrase`` test list (4 tasks)."""

QA_TO_QA_TRAIN: tuple[str, ...] = (
    "biomrc", "boolq", "freebase_qa", "hotpot_qa", "kilt_hotpotqa", "kilt_nq", "kilt_trex",
    "kilt_zsre", "lama-conceptnet", "lama-google_re", "lama-squad", "lama-trex", "mc_taco",
    "numer_sense", "quoref", "ropes", "search_qa", "squad-no_context", "squad-with_context",
    "superglue-multirc", "superglue-record", "tweet_qa", "web_questions", "unifiedqa:squad2",
    "unifiedqa:natural_questions_with_dpr_para", "unifiedqa:race_string", "unifiedqa:squad1_1",
    "unifiedqa:drop", "unifiedqa:newsqa", "unifiedqa:narrativeqa", "unifiedqa:winogrande_xl",
    "unifiedqa:social_iqa", "unifiedqa:quoref", "unifiedqa:physical_iqa", "unifiedqa:ropes",
    "unifiedqa:commonsenseqa", "unifiedqa:boolq",
)
"""MetaICL ``qa_to_qa`` train list (37 tasks, verbatim; many are open-ended QA)."""

QA_TO_QA_TEST: tuple[str, ...] = (
    "ai2_arc", "codah", "cosmos_qa", "dream", "hellaswag", "openbookqa", "qasc", "quail",
    "quarel", "quartz-no_knowledge", "quartz-with_knowledge", "sciq", "superglue-copa", "swag",
    "wino_grande", "wiqa", "unifiedqa:qasc", "unifiedqa:qasc_with_ir", "unifiedqa:openbookqa",
    "unifiedqa:openbookqa_with_ir", "unifiedqa:mctest", "unifiedqa:ai2_science_middle",
)
"""MetaICL ``qa_to_qa`` test list (22 tasks)."""

OVERSIZED: Mapping[str, int] = {
    "circa": 5,
    "dbpedia_14": 14,
    "discovery": 174,
    "emotion": 6,
    "liar": 6,
    "trec": 6,
    "trec-finegrained": 47,
    "tweet_eval-emoji": 20,
    "yahoo_answers_topics": 10,
}
"""Tasks of these lists whose CrossFit label set has more than four options, with its size.

The option filter removes them; so the hub source has no converter for them
and never downloads them, and a data directory may lack their folders.
"""


@dataclass(frozen=True)
class SuiteSpec:
    """What a suite is made of: its name, description and task lists."""

    name: str
    description: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    remarks: tuple[str, ...] = field(default=())
    """Fixed remarks about how the lists were derived, copied into :attr:`Suite.notes`."""

    @property
    def validation(self) -> tuple[str, ...]:
        """The validation tasks: the test tasks (read from their k-shot files)."""
        return self.test

    def roles(self) -> dict[TaskRole, list[str]]:
        """Task names per role."""
        return {
            TaskRole.TRAIN: list(self.train),
            TaskRole.VALIDATION: list(self.validation),
            TaskRole.TEST: list(self.test),
        }


def _without(train: tuple[str, ...], test: tuple[str, ...]) -> tuple[str, ...]:
    """``train`` minus the tasks of ``test``, order kept."""
    return tuple(t for t in train if t not in test)


def _overlap_remark(train: tuple[str, ...], test: tuple[str, ...]) -> tuple[str, ...]:
    both = [t for t in train if t in test]
    if not both:
        return ()
    return (
        "MetaICL lists " + ", ".join(both) + " as both a training and a test task; "
        "it is used as a test task only",
    )


SUITE_SPECS: tuple[SuiteSpec, ...] = (
    SuiteSpec(
        name="cls45",
        description=(
            "cls-45 (paper A.2): 34 classification training tasks; 15 unseen classification "
            "tasks for validation (k-shot files) and test. Needs --data-dir or the HF hub."
        ),
        train=CLS45_TRAIN,
        test=CLS45_TEST,
    ),
    SuiteSpec(
        name="cls23",
        description=(
            "cls-23 (paper A.2): 28 training tasks mixing classification, NLI and "
            "multiple-choice QA; the 15 cls-45 test tasks. Needs --data-dir or the HF hub."
        ),
        train=CLS23_TRAIN,
        test=CLS45_TEST,
    ),
    SuiteSpec(
        name="nli",
        description=(
            "MetaICL non_nli_to_nli: train on its non-NLI classification tasks, test on 8 NLI "
            "tasks. Needs --data-dir or the HF hub."
        ),
        train=_without(NON_NLI_TO_NLI_TRAIN, NON_NLI_TO_NLI_TEST),
        test=NON_NLI_TO_NLI_TEST,
        remarks=_overlap_remark(NON_NLI_TO_NLI_TRAIN, NON_NLI_TO_NLI_TEST),
    ),
    SuiteSpec(
        name="para",
        description=(
            "MetaICL non_paraphrase_to_paraphrase: train on its non-paraphrase classification "
            "tasks, test on 4 paraphrase tasks. Needs --data-dir or the HF hub."
        ),
        train=_without(NON_PARAPHRASE_TO_PARAPHRASE_TRAIN, NON_PARAPHRASE_TO_PARAPHRASE_TEST),
        test=NON_PARAPHRASE_TO_PARAPHRASE_TEST,
        remarks=_overlap_remark(
            NON_PARAPHRASE_TO_PARAPHRASE_TRAIN, NON_PARAPHRASE_TO_PARAPHRASE_TEST
        ),
    ),
    SuiteSpec(
        name="mcqa",
        description=(
            "MetaICL qa_to_qa: train on QA tasks, test on 22 knowledge multiple-choice QA "
            "tasks. Needs --data-dir with MetaICL files."
        ),
        train=_without(QA_TO_QA_TRAIN, QA_TO_QA_TEST),
        test=QA_TO_QA_TEST,
        remarks=_overlap_remark(QA_TO_QA_TRAIN, QA_TO_QA_TEST),
    ),
)
"""Every suite of the plugin, in the order ``metalora tasks`` lists them."""
