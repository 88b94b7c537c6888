"""Building CrossFit tasks from Hugging Face hub datasets (the default without --data-dir).

Each task has a :class:`HubTask`: which hub dataset (and config, splits) it
comes from and a row converter from that dataset's schema to a record
``(input, output, options)``, written after MetaICL's preprocessing scripts
(``preprocess/<task>.py``), whose output the benchmark's local files are: the
same input templates (``"premise: ... [SEP] hypothesis: ..."``), the same
label names and the same option lists, quirks included (``tweet_eval-irony``
offers ``['0', '1', 'hate', 'non-irony']`` and calls irony ``hate``;
``ethos-directed_vs_generalized`` spells ``generalied``; ``superglue-wsc``
writes ``span1_text`` without a colon), so that a suite means the same
thing from the hub as from MetaICL files. Multiple-choice QA tasks
(``hellaswag``, ``openbookqa``, ``sciq``, ``quartz``) put the choices in
``options`` directly, which is what MetaICL recovers from its ``(A) ...``
markers.

The converter layer takes an already-loaded :class:`datasets.Dataset` (or any
iterable of rows): :meth:`HubTask.convert`. :class:`HubSource` loads the
dataset with :func:`datasets.load_dataset` (cached in the datasets cache) and
cuts the converted rows into the roles' portions as MetaICL does:

* the held-out portion is the dataset's evaluation split, or, for datasets
  with a single labelled split, the last 20% after a seed-42 shuffle;
* **validation** tasks get MetaICL's k-shot sample: the training portion
  shuffled with the k-shot seed, first ``k`` (train) plus next ``k`` (dev)
  rows, i.e. the rows of MetaICL's ``<task>_<k>_<seed>_{train,dev}.jsonl``;
* **training** tasks get the first :data:`HUB_TRAIN_ROWS` rows of that same
  shuffle (the paper's cls-45 has 68K training examples: 34 x 2,000);
* **test** tasks get the held-out portion.

Only the rows a role needs are kept. Training splits over :data:`LARGE_SPLIT`
rows (and explicit hold-outs such as amazon_polarity's) are shuffled as row
indices and only the rows needed are converted: the same order as MetaICL's
shuffle of the converted rows whenever the converter leaves no row out.

Dataset ids are those of the hub at the time of writing; datasets that still
ship a loading script are read from the hub's Parquet export
(:data:`PARQUET_REVISION`). Tasks whose label set has more than four options
(:data:`OVERSIZED`, and any :class:`HubTask` with more fixed options) are
removed before anything is downloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metalora import MAX_OPTIONS, MetaloraError, TaskRecord, TaskRole, hub_reachable, offline_hub
from metalora_plugins.crossfit.reader import DEFAULT_K, DEFAULT_SEED, SourcedTask
from metalora_plugins.crossfit.suites import OVERSIZED

if TYPE_CHECKING:
    import datasets

Row = Mapping[str, Any]
"""One row of a hub dataset."""
Converted = tuple[str, str, Sequence[str]]
"""``(input, output, options)`` of one record."""
RowConverter = Callable[[Row, np.random.RandomState], Converted | None]
"""Turns one row into a record, or ``None`` for a row left out by design (e.g. no label)."""

HUB_TRAIN_ROWS = 2000
"""Rows per training task from the hub (the paper: 68K training examples over 34 tasks)."""
HOLDOUT_SEED = 42
"""MetaICL's seed for shuffles inside a conversion and for 80/20 hold-out splits."""
HOLDOUT_TRAIN_FRACTION = 0.8
"""Share of a single-split dataset kept for training; the rest is held out for test."""
PARQUET_REVISION = "refs/convert/parquet"
"""The hub's automatic Parquet export, for datasets that still ship a loading script."""
LARGE_SPLIT = 200_000
"""Training splits larger than this are shuffled by row index and only the rows needed are
converted (the same order as MetaICL's unless the converter leaves rows out)."""
HUB_HINT = "pass --data-dir with MetaICL-format files to run without the hub"

# hub dataset ids
GLUE = "nyu-mll/glue"
SUPER_GLUE = "aps/super_glue"
TWEET_EVAL = "cardiffnlp/tweet_eval"
ETHOS = "iamollas/ethos"
BLIMP = "nyu-mll/blimp"


@dataclass(frozen=True)
class ConvertedRows:
    """The records converted from one split, and how many rows were left out by design."""

    records: list[TaskRecord]
    dropped: int


@dataclass(frozen=True)
class HubTask:
    """How one CrossFit task is built from a hub dataset."""

    task: str
    path: str
    """Hub dataset id."""
    config: str | None
    row: RowConverter
    options: tuple[str, ...] | None = None
    """The task's fixed options (classification tasks); ``None`` when they vary per row."""
    train_split: str = "train"
    test_split: str | None = "validation"
    """The held-out split; ``None``: hold out the last 20% of the shuffled training split."""
    holdout: tuple[int, int] | None = None
    """Explicit (train, test) sizes for the hold-out instead of 80/20 (MetaICL's amazon)."""
    test_fraction: float | None = None
    """Keep only this share of the shuffled held-out split (MetaICL's yelp_polarity)."""
    revision: str | None = None

    @property
    def label(self) -> str:
        """``path`` with its config, for messages: ``nyu-mll/glue (sst2)``."""
        return f"{self.path} ({self.config})" if self.config else self.path

    def convert(self, dataset: datasets.Dataset | Iterable[Row]) -> ConvertedRows:
        """Convert every row of one split, in order, into records of this task.

        Inputs and outputs are normalised like MetaICL's ``preprocess``:
        input stripped, literal ``\\n`` replaced by a space; output stripped.
        A missing column or an output outside the options raises a one-line
        :class:`MetaloraError` (the hub schema differs from the converter's).
        """
        rng = np.random.RandomState(HOLDOUT_SEED)
        records: list[TaskRecord] = []
        dropped = 0
        for index, row in enumerate(iter_rows(dataset)):
            try:
                converted = self.row(row, rng)
            except KeyError as exc:
                raise MetaloraError(
                    f"hub dataset {self.label} has no column {exc} (row {index}, task "
                    f"'{self.task}'): its schema is not the one the converter expects; {HUB_HINT}"
                ) from None
            if converted is None:
                dropped += 1
                continue
            input_, output, options = converted
            input_ = input_.strip().replace("\\n", " ")
            output = str(output).split("\t")[0].strip()
            if not input_:
                dropped += 1
                continue
            if output not in options:
                raise MetaloraError(
                    f"hub dataset {self.label}, row {index}: output {output!r} of task "
                    f"'{self.task}' is not one of its options {list(options)!r}"
                )
            records.append(TaskRecord(self.task, input_, output, tuple(options),
                                      source=f"{self.label}, row {index}"))
        return ConvertedRows(records, dropped)


def iter_rows(dataset: datasets.Dataset | Iterable[Row], batch_size: int = 1000) -> Iterable[Row]:
    """The rows of ``dataset`` as dicts; a :class:`datasets.Dataset` is read in batches.

    Batched reading converts Arrow to Python column-wise, many times faster
    than indexing row by row; the rows are the same.
    """
    if not (hasattr(dataset, "iter") and hasattr(dataset, "column_names")):
        yield from dataset
        return
    for batch in dataset.iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*(batch[key] for key in keys), strict=True):
            yield dict(zip(keys, values, strict=True))


def convert_in_order(
    spec: HubTask, dataset: Any, order: np.ndarray, needed: int
) -> tuple[list[TaskRecord], int]:
    """Convert the rows of ``dataset`` taken in ``order`` until ``needed`` records are made.

    Returns the records (at most ``needed``) and how many rows were left out on
    the way. Only as many rows as needed are read (``dataset.select``), in
    chunks; a converter drawing from the conversion's random stream (blimp,
    crows_pairs, sciq) would draw per chunk, but none of them is read this way.
    """
    records: list[TaskRecord] = []
    dropped = 0
    position, chunk = 0, needed + 64
    while len(records) < needed and position < len(order):
        indices = order[position:position + chunk]
        converted = spec.convert(dataset.select(indices))
        records.extend(converted.records)
        dropped += converted.dropped
        position += len(indices)
        chunk *= 2
    return records[:needed], dropped


# -- row converters ---------------------------------------------------------------------------


def _text(column: str, *, newlines: bool = False, strip_tabs: bool = False) -> Callable[[Row], str]:
    """The input is one column (newlines replaced by spaces if asked)."""

    def text(row: Row) -> str:
        value = str(row[column])
        if newlines:
            value = value.replace("\n", " ")
        if strip_tabs:
            value = value.replace("\n", "").replace("\t", "")
        return value

    return text


def _pair(
    name1: str, column1: str, name2: str, column2: str, *, newlines: bool = False
) -> Callable[[Row], str]:
    """The input ``"<name1>: <column1> [SEP] <name2>: <column2>"``."""

    def text(row: Row) -> str:
        first, second = str(row[column1]), str(row[column2])
        if newlines:
            first, second = first.replace("\n", " "), second.replace("\n", " ")
        return f"{name1}: {first} [SEP] {name2}: {second}"

    return text


def classify(
    task: str,
    path: str,
    config: str | None,
    text: Callable[[Row], str],
    labels: Sequence[str] | Mapping[Any, str],
    *,
    column: str = "label",
    options: Sequence[str] | None = None,
    drop: Sequence[Any] = (-1,),
    **split_kwargs: Any,
) -> HubTask:
    """A classification task: input ``text(row)``, output ``labels[row[column]]``.

    ``labels`` maps label values (list positions, or a mapping) to CrossFit's
    label names; ``options`` defaults to the sorted label names, as in
    MetaICL's task configs. Rows whose label is in ``drop`` (unlabelled test
    rows are -1) are left out; any other unknown label raises.
    """
    mapping: dict[Any, str] = dict(labels) if isinstance(labels, Mapping) else dict(
        enumerate(labels)
    )
    fixed = tuple(options) if options is not None else tuple(sorted(set(mapping.values())))

    def row(example: Row, rng: np.random.RandomState) -> Converted | None:
        value = example[column]
        if value is None or value in drop:
            return None
        if value not in mapping:
            raise MetaloraError(
                f"hub dataset {path}: task '{task}' has label {value!r} in column '{column}', "
                f"which is not one of {sorted(mapping, key=str)}"
            )
        return text(example), mapping[value], fixed

    return HubTask(task, path, config, row, options=fixed, **split_kwargs)


def _majority(values: Sequence[Any]) -> Any:
    """The most common value, or ``None`` on a tie for first (as CrossFit's ``get_majority``)."""
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def _column_of_records(value: Any, key: str) -> list[Any]:
    """``[item[key] for item in value]`` for a list of dicts, or ``value[key]`` for a dict of lists.

    A ``Sequence`` of structs comes out of :mod:`datasets` as a dict of lists;
    a ``List`` of structs as a list of dicts.
    """
    if isinstance(value, Mapping):
        return list(value[key])
    return [item[key] for item in value]


HATEXPLAIN_LABELS = ("hatespeech", "normal", "offensive")


def _hatexplain(row: Row, rng: np.random.RandomState) -> Converted | None:
    label = _majority(_column_of_records(row["annotators"], "label"))
    if label is None:
        return None
    return " ".join(row["post_tokens"]), HATEXPLAIN_LABELS[label], HATEXPLAIN_LABELS


WELLFORMED = ("not well-formed", "well-formed")


def _wellformed(row: Row, rng: np.random.RandomState) -> Converted | None:
    rating = float(row["rating"])
    if rating < 0.4:
        return str(row["content"]), WELLFORMED[0], WELLFORMED
    if rating > 0.6:
        return str(row["content"]), WELLFORMED[1], WELLFORMED
    return None


FEVER = ("REFUTES", "SUPPORTS")


def _kilt_fever(row: Row, rng: np.random.RandomState) -> Converted | None:
    answers = [a for a in _column_of_records(row["output"], "answer") if a]
    if not answers or answers[0] not in FEVER:
        return None
    return str(row["input"]).replace("\n", " "), answers[0], FEVER


def _health_fact(row: Row, rng: np.random.RandomState) -> Converted | None:
    labels = ("false", "mixture", "true", "unproven")
    if row["label"] is None or row["label"] < 0:
        return None
    claim = str(row["claim"]).strip().replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return claim, labels[row["label"]], labels


SENTENCE_PAIR = ("sentence 1", "sentence 2")


def _good_bad_pair(good: str, bad: str) -> RowConverter:
    """BLiMP / CrowS-Pairs: which of two sentences is the good (or more stereotypical) one.

    The order is drawn as MetaICL does, from one seed-42 stream per split.
    """

    def row(example: Row, rng: np.random.RandomState) -> Converted | None:
        first = str(example[good]).replace("\n", "").replace("\t", "")
        second = str(example[bad]).replace("\n", "").replace("\t", "")
        if rng.random_sample() > 0.5:
            return f"sentence 1: {first} [SEP] sentence 2: {second}", "sentence 1", SENTENCE_PAIR
        return f"sentence 1: {second} [SEP] sentence 2: {first}", "sentence 2", SENTENCE_PAIR

    return row


def _hellaswag(row: Row, rng: np.random.RandomState) -> Converted | None:
    if row["label"] in (None, ""):
        return None
    endings = [str(e) for e in row["endings"]]
    return str(row["ctx"]), endings[int(row["label"])], endings


def _lettered_choices(question: Callable[[Row], str], *, force_abcd: bool = False) -> RowConverter:
    """Choices ``{"text": [...], "label": [...]}`` and an ``answerKey`` among the labels."""

    def row(example: Row, rng: np.random.RandomState) -> Converted | None:
        texts = [str(t) for t in example["choices"]["text"]]
        letters = list("ABCD")[: len(texts)] if force_abcd else list(example["choices"]["label"])
        key = example["answerKey"]
        if key not in letters:
            return None
        return question(example), texts[letters.index(key)], texts

    return row


def _piqa(row: Row, rng: np.random.RandomState) -> Converted | None:
    if row["label"] is None or row["label"] < 0:
        return None
    text = f"goal: {row['goal']} [SEP] solution 1{row['sol1']} [SEP] solution 2{row['sol2']}"
    text = text.replace("\t", "").replace("\n", "").replace("\r", "")
    return text, str(row["label"]), ("0", "1")


def _sciq(row: Row, rng: np.random.RandomState) -> Converted | None:
    support = str(row["support"]).replace("\n", " ")
    if not support:
        return None
    answer = str(row["correct_answer"])
    choices = [str(row["distractor1"]), str(row["distractor2"]), str(row["distractor3"]), answer]
    rng.shuffle(choices)
    question = str(row["question"]).replace("\n", " ")
    return f"{support} {question}", answer, choices


def _onestop(row: Row, rng: np.random.RandomState) -> Converted | None:
    labels = ("elementary", "intermediate", "advance")
    text = str(row["text"]).replace("\n", " ")
    if text.startswith("Intermediate  "):
        text = text[len("Intermediate  "):]
    return text, labels[row["label"]], tuple(sorted(labels))


def _tweet_eval(
    subset: str, labels: Sequence[str], options: Sequence[str] | None = None
) -> HubTask:
    return classify(
        f"tweet_eval-{subset}", TWEET_EVAL, subset, _text("text", newlines=True), labels,
        options=options,
    )


def _ethos(dimension: str) -> HubTask:
    labels = ("generalied", "directed") if dimension == "directed_vs_generalized" else (
        "false", "true")
    return classify(
        f"ethos-{dimension}", ETHOS, "multilabel", lambda r: str(r["text"]).strip(), labels,
        column=dimension, test_split=None,
    )


def _blimp(paradigm: str) -> HubTask:
    return HubTask(
        f"blimp-{paradigm}", BLIMP, paradigm, _good_bad_pair("sentence_good", "sentence_bad"),
        options=SENTENCE_PAIR, test_split=None,
    )


STANCE = ("none", "against", "favor")
NLI3 = ("entailment", "neutral", "contradiction")

HUB_TASK_LIST: tuple[HubTask, ...] = (
    # GLUE
    classify("glue-cola", GLUE, "cola", _text("sentence"), ("unacceptable", "acceptable")),
    classify("glue-sst2", GLUE, "sst2", lambda r: f"sentence: {r['sentence']}",
             ("negative", "positive")),
    classify("glue-mrpc", GLUE, "mrpc", _pair("sentence 1", "sentence1", "sentence 2",
             "sentence2"), ("not_equivalent", "equivalent")),
    classify("glue-qqp", GLUE, "qqp", _pair("question 1", "question1", "question 2",
             "question2"), ("not_duplicate", "duplicate")),
    classify("glue-mnli", GLUE, "mnli", _pair("premise", "premise", "hypothesis", "hypothesis"),
             NLI3, test_split="validation_matched"),
    classify("glue-qnli", GLUE, "qnli", _pair("question", "question", "sentence", "sentence"),
             ("entailment", "not_entailment")),
    classify("glue-rte", GLUE, "rte", _pair("sentence 1", "sentence1", "sentence 2",
             "sentence2"), ("entailment", "not_entailment")),
    classify("glue-wnli", GLUE, "wnli", _pair("sentence 1", "sentence1", "sentence 2",
             "sentence2"), ("not_entailment", "entailment")),
    # SuperGLUE
    classify("superglue-rte", SUPER_GLUE, "rte", _pair("premise", "premise", "hypothesis",
             "hypothesis", newlines=True), ("entailment", "not_entailment")),
    classify("superglue-wic", SUPER_GLUE, "wic", lambda r: (
        f"word: {r['word']} [SEP] sentence 1: {r['sentence1']} [SEP] sentence 2: "
        f"{r['sentence2']}"), ("false", "true")),
    classify("superglue-wsc", SUPER_GLUE, "wsc.fixed", lambda r: (
        f"text: {r['text']} [SEP] span1_text{r['span1_text']} [SEP] span2_text: "
        f"{r['span2_text']}"), ("false", "true")),
    classify("superglue-cb", SUPER_GLUE, "cb", _pair("premise", "premise", "hypothesis",
             "hypothesis"), ("entailment", "contradiction", "neutral")),
    # TweetEval
    _tweet_eval("emotion", ("anger", "joy", "optimism", "sadness")),
    _tweet_eval("hate", ("non-hate", "hate")),
    _tweet_eval("irony", ("non-irony", "hate"), options=("0", "1", "hate", "non-irony")),
    _tweet_eval("offensive", ("non-offensive", "hate")),
    _tweet_eval("sentiment", ("negative", "neutral", "positive")),
    _tweet_eval("stance_abortion", STANCE),
    _tweet_eval("stance_atheism", STANCE),
    _tweet_eval("stance_climate", STANCE),
    _tweet_eval("stance_feminist", STANCE),
    _tweet_eval("stance_hillary", STANCE),
    # ETHOS (one task per dimension of the multilabel config)
    *(_ethos(d) for d in ("directed_vs_generalized", "disability", "gender", "national_origin",
                          "race", "religion", "sexual_orientation")),
    # other classification tasks of cls-45
    classify("ade_corpus_v2-classification", "ade-benchmark-corpus/ade_corpus_v2",
             "Ade_corpus_v2_classification", _text("text"), ("Not Related", "Related"),
             test_split=None),
    classify("ag_news", "fancyzhx/ag_news", None, _text("text"),
             ("World", "Sports", "Business", "Sci/Tech"), test_split="test"),
    classify("anli", "facebook/anli", None, _pair("premise", "premise", "hypothesis",
             "hypothesis", newlines=True), NLI3, train_split="train_r1", test_split="dev_r1"),
    classify("climate_fever", "tdiggelm/climate_fever", None, _text("claim"),
             ("Supports", "Refutes", "Not enough info", "Disputed"), column="claim_label",
             train_split="test", test_split=None),
    HubTask("google_wellformed_query", "google-research-datasets/google_wellformed_query", None,
            _wellformed, options=WELLFORMED),
    classify("hate_speech18", "odegiber/hate_speech18", None, _text("text"), ("noHate", "hate"),
             drop=(-1, 2, 3), test_split=None),
    classify("hate_speech_offensive", "tdavidson/hate_speech_offensive", None,
             _text("tweet", newlines=True), ("hate speech", "offensive language", "neither"),
             column="class", test_split=None),
    HubTask("hatexplain", "Hate-speech-CNERG/hatexplain", None, _hatexplain,
            options=HATEXPLAIN_LABELS, revision=PARQUET_REVISION),
    HubTask("health_fact", "ImperialCollegeLondon/health_fact", None, _health_fact,
            options=("false", "mixture", "true", "unproven"), revision=PARQUET_REVISION),
    classify("imdb", "stanfordnlp/imdb", None, _text("text", strip_tabs=True),
             ("negative", "positive"), test_split="test"),
    HubTask("kilt_fever", "facebook/kilt_tasks", "fever", _kilt_fever, options=FEVER),
    classify("medical_questions_pairs", "curaihealth/medical_questions_pairs", None,
             _pair("question 1", "question_1", "question 2", "question_2"),
             ("Similar", "Dissimilar"), test_split=None),  # label names as in MetaICL
    classify("paws", "google-research-datasets/paws", "labeled_final",
             _pair("sentence 1", "sentence1", "sentence 2", "sentence2"),
             ("not_duplicate", "duplicate")),
    classify("poem_sentiment", "google-research-datasets/poem_sentiment", None,
             _text("verse_text"), ("negative", "positive", "no_impact"), drop=(-1, 3)),
    classify("rotten_tomatoes", "cornell-movie-review-data/rotten_tomatoes", None,
             _text("text"), ("negative", "positive")),
    classify("scitail", "allenai/scitail", "snli_format",
             _pair("sentence 1", "sentence1", "sentence 2", "sentence2"),
             {"entailment": "entailment", "neutral": "neutral"}, column="gold_label",
             drop=("", "-")),
    classify("sick", "RobZamp/sick", None, _pair("sentence 1", "sentence_A", "sentence 2",
             "sentence_B"), NLI3, revision=PARQUET_REVISION),
    classify("sms_spam", "ucirvine/sms_spam", None, lambda r: str(r["sms"]).strip(),
             ("ham", "spam"), test_split=None),
    classify("wiki_qa", "microsoft/wiki_qa", None, _pair("question", "question", "answer",
             "answer"), ("false", "true")),
    classify("yelp_polarity", "fancyzhx/yelp_polarity", None,
             lambda r: str(r["text"]).replace("\\n", " "), ("negative", "positive"),
             test_split="test", test_fraction=0.2),
    # cls-23 additions
    _blimp("ellipsis_n_bar_2"),
    _blimp("sentential_negation_npi_scope"),
    HubTask("crows_pairs", "nyu-mll/crows_pairs", None, _good_bad_pair("sent_more", "sent_less"),
            options=SENTENCE_PAIR, train_split="test", test_split=None,
            revision=PARQUET_REVISION),
    HubTask("hellaswag", "Rowan/hellaswag", None, _hellaswag),
    HubTask("openbookqa", "allenai/openbookqa", "main",
            _lettered_choices(lambda r: str(r["question_stem"]), force_abcd=True)),
    HubTask("piqa", "ybisk/piqa", None, _piqa, options=("0", "1"), revision=PARQUET_REVISION),
    HubTask("quartz-no_knowledge", "allenai/quartz", None,
            _lettered_choices(lambda r: str(r["question"]))),
    HubTask("sciq", "allenai/sciq", None, _sciq),
    # further training tasks of the nli and para suites
    classify("amazon_polarity", "fancyzhx/amazon_polarity", None,
             _pair("title", "title", "content", "content"), ("negative", "positive"),
             test_split=None, holdout=(10000, 1000)),
    classify("emo", "SemEvalWorkshop/emo", None, lambda r: str(r["text"]).strip(),
             ("others", "happy", "sad", "angry"), test_split="test"),
    classify("financial_phrasebank", "takala/financial_phrasebank", "sentences_allagree",
             _text("sentence"), ("negative", "neutral", "positive"), test_split=None,
             revision=PARQUET_REVISION),
    HubTask("onestop_english", "iastate/onestop_english", None, _onestop,
            options=("advance", "elementary", "intermediate"), test_split=None),
    classify("tab_fact", "wenhu/tab_fact", "tab_fact", lambda r: (
        f"statement: {r['statement']} [SEP] table_caption: {r['table_caption']} [SEP] "
        f"table_text: {str(r['table_text']).replace(chr(10), ' [n] ')}"),
        ("refuted", "entailed"), revision=PARQUET_REVISION),
)
"""Every task the hub source can build, in no particular order."""

HUB_TASKS: Mapping[str, HubTask] = {spec.task: spec for spec in HUB_TASK_LIST}
""":data:`HUB_TASK_LIST` by task name."""

def convert_dataset(task: str, dataset: datasets.Dataset | Iterable[Row]) -> ConvertedRows:
    """Convert one loaded split of ``task``'s hub dataset with the task's converter."""
    if task not in HUB_TASKS:
        raise MetaloraError(f"no hub converter for task '{task}'; {HUB_HINT}")
    return HUB_TASKS[task].convert(dataset)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    modules = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    return bool(
        names & {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "Timeout"}
        or modules & {"httpx", "httpcore", "requests", "urllib3"}
    )


def hub_error(exc: BaseException, spec: HubTask) -> MetaloraError:
    """A one-line :class:`MetaloraError` for a failure to load ``spec``'s dataset."""
    detail = _first_line(exc)
    if _is_network_error(exc):
        return MetaloraError(
            f"the Hugging Face hub is unreachable (loading {spec.label} for task '{spec.task}': "
            f"{detail}); {HUB_HINT}"
        )
    if type(exc).__name__ == "DatasetNotFoundError":
        return MetaloraError(
            f"hub dataset {spec.label} for task '{spec.task}' was not found ({detail}); {HUB_HINT}"
        )
    return MetaloraError(
        f"could not load hub dataset {spec.label} for task '{spec.task}' "
        f"({type(exc).__name__}: {detail}); {HUB_HINT}"
    )


@dataclass
class Portions:
    """A task's converted rows, cut into the portions the roles draw from."""

    train: list[TaskRecord]
    """The training portion shuffled with the k-shot seed (MetaICL's k-shot order), cut to
    the rows the roles need."""
    test: list[TaskRecord]
    dropped: int


class HubSource:
    """Tasks converted from Hugging Face hub datasets (see the module docstring).

    ``load`` is the dataset loader, :func:`datasets.load_dataset` by default;
    ``cache_dir`` is passed on to it (``None``: the datasets cache).
    """

    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        seed: int = DEFAULT_SEED,
        train_rows: int = HUB_TRAIN_ROWS,
        cache_dir: Path | None = None,
        load: Callable[..., Any] | None = None,
        tasks: Mapping[str, HubTask] = HUB_TASKS,
    ) -> None:
        self.k = k
        self.seed = seed
        self.train_rows = train_rows
        self.cache_dir = cache_dir
        self._load_fn = load
        self.tasks = tasks
        self._cache: dict[str, Portions] = {}

    def describe(self) -> str:
        """One line saying where and how the tasks are built, for the suite's notes."""
        return (
            "converted from Hugging Face hub datasets (datasets cache): training tasks use up "
            f"to {self.train_rows} rows of the training split; validation tasks MetaICL's "
            f"k-shot sample (k={self.k}, seed={self.seed}, train+dev); test tasks the "
            "held-out split"
        )

    def check(self, roles: Mapping[TaskRole, Sequence[str]]) -> dict[str, int]:
        """Tasks to remove before downloading (more than four options), with their option count.

        Raises a one-line :class:`MetaloraError` listing every task that has no
        converter (nothing is downloaded then).
        """
        tasks = list(dict.fromkeys(t for names in roles.values() for t in names))
        oversized: dict[str, int] = {}
        missing = []
        for task in tasks:
            spec = self.tasks.get(task)
            if spec is not None and spec.options is not None and len(spec.options) > MAX_OPTIONS:
                oversized[task] = len(spec.options)
            elif spec is None and task in OVERSIZED:
                oversized[task] = OVERSIZED[task]
            elif spec is None:
                missing.append(task)
        if missing:
            raise MetaloraError(
                f"no Hugging Face hub converter for {len(missing)} task(s): "
                + ", ".join(missing) + f"; {HUB_HINT}"
            )
        return oversized

    def _load(self, spec: HubTask) -> Any:
        load = self._load_fn
        offline = False
        if load is None:
            import datasets

            load = datasets.load_dataset
            offline = not hub_reachable()  # then only the datasets cache, without retries
        kwargs: dict[str, Any] = {}
        if spec.revision is not None:
            kwargs["revision"] = spec.revision
        if self.cache_dir is not None:
            kwargs["cache_dir"] = str(self.cache_dir)
        try:
            with offline_hub() if offline else contextlib.nullcontext():
                return load(spec.path, spec.config, **kwargs)
        except MetaloraError:
            raise
        except Exception as exc:  # the hub and datasets raise many kinds; all become one line
            raise hub_error(exc, spec) from None

    def portions(self, task: str, splits: Mapping[str, Any] | None = None) -> Portions:
        """Convert ``task``'s dataset (loaded once) into its training and held-out portions.

        ``splits`` maps split names to already-loaded splits (the result then
        replaces any cached one); by default the dataset is loaded from the hub.
        """
        if task in self._cache and splits is None:
            return self._cache[task]
        spec = self.tasks[task]
        loaded = splits if splits is not None else self._load(spec)

        def split(name: str) -> Any:
            if name not in loaded:
                raise MetaloraError(
                    f"hub dataset {spec.label} has no split '{name}' (it has "
                    f"{', '.join(map(str, loaded))}); task '{task}'"
                )
            return loaded[name]

        needed = max(self.train_rows, 2 * self.k)
        train_split = split(spec.train_split)
        if spec.test_split is None and spec.holdout is not None:
            n_train, n_test = spec.holdout
            order = np.random.RandomState(HOLDOUT_SEED).permutation(len(train_split))
            rows, dropped = convert_in_order(spec, train_split, order, n_train + n_test)
            train_rows, test_rows = rows[:n_train], rows[n_train:]
            np.random.RandomState(self.seed).shuffle(train_rows)
        elif spec.test_split is None:
            converted = spec.convert(train_split)
            dropped = converted.dropped
            rows = list(converted.records)
            np.random.RandomState(HOLDOUT_SEED).shuffle(rows)
            cut = int(HOLDOUT_TRAIN_FRACTION * len(rows))
            train_rows, test_rows = rows[:cut], rows[cut:]
            np.random.RandomState(self.seed).shuffle(train_rows)
        else:
            held = spec.convert(split(spec.test_split))
            test_rows = list(held.records)
            if spec.test_fraction is not None:
                np.random.RandomState(HOLDOUT_SEED).shuffle(test_rows)
                test_rows = test_rows[: int(spec.test_fraction * len(test_rows))]
            if len(train_split) > LARGE_SPLIT and hasattr(train_split, "select"):
                order = np.random.RandomState(self.seed).permutation(len(train_split))
                train_rows, dropped = convert_in_order(spec, train_split, order, needed)
            else:
                converted = spec.convert(train_split)
                train_rows = list(converted.records)
                np.random.RandomState(self.seed).shuffle(train_rows)
                dropped = converted.dropped
            dropped += held.dropped
        train_rows = train_rows[:needed]
        result = Portions(train=train_rows, test=test_rows, dropped=dropped)
        self._cache[task] = result
        return result

    def read(self, task: str, role: TaskRole) -> SourcedTask:
        """The records of ``task`` in ``role``, converted from its hub dataset."""
        portions = self.portions(task)
        if role == TaskRole.TRAIN:
            records = portions.train[: self.train_rows]
        elif role == TaskRole.VALIDATION:
            records = portions.train[: 2 * self.k]
        else:
            records = portions.test
        if not records:
            raise MetaloraError(
                f"hub dataset {self.tasks[task].label} gave no {role} records for task '{task}'"
            )
        return SourcedTask(
            name=task, records=list(records), origin=self.tasks[task].label,
            dropped=portions.dropped,
        )
