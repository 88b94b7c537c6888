"""Tests of the ``crossfit`` suites: task lists, MetaICL reader, option filter, hub converters.

Nothing here reads the shared benchmark data: every MetaICL file is written
into ``tmp_path``, and the hub converters run on real :class:`datasets.Dataset`
objects loaded (``load_dataset("json" | "parquet")``) from local files written
in each hub dataset's schema.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import datasets.config
import numpy as np
import pytest

import metalora_plugins.crossfit as crossfit
from metalora.errors import MetaloraError
from metalora.interfaces import DataOptions, TaskSampler
from metalora.plugins import PluginManager
from metalora.records import Suite, TaskRecord, TaskRole
from metalora_plugins.crossfit import (
    CLS23_TRAIN,
    CLS45_TEST,
    CLS45_TRAIN,
    DEFAULT_K,
    DEFAULT_SEED,
    HUB_TASKS,
    OVERSIZED,
    SUITES,
    CrossFitSuite,
    HubSource,
    SuiteSpec,
    hub,
)
from metalora_plugins.crossfit.hub import convert_dataset
from metalora_plugins.crossfit.reader import LOGGER, read_jsonl
from metalora_plugins.crossfit.sampler import CrossFitSettings
from metalora_plugins.crossfit.suites import NON_NLI_TO_NLI_TRAIN, SUITE_SPECS

# -- helpers: MetaICL files in tmp_path -------------------------------------------------------

SENTIMENT = ["negative", "positive"]


def rec(task: str, text: str, output: str = "positive", options: Sequence[str] = SENTIMENT) -> dict:
    """One MetaICL record."""
    return {"task": task, "input": text, "output": output, "options": list(options)}


def write_lines(path: Path, lines: Iterable[dict | str]) -> Path:
    """Write ``lines`` (dicts as JSON, strings verbatim) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def kshot(root: Path, task: str, split: str, records: list[dict], k: int = DEFAULT_K,
          seed: int = DEFAULT_SEED) -> Path:
    """Write ``<task>_<k>_<seed>_<split>.jsonl``."""
    return write_lines(root / task / f"{task}_{k}_{seed}_{split}.jsonl", records)


def held_out(root: Path, task: str, records: list[dict]) -> Path:
    """Write ``<task>_test.jsonl``."""
    return write_lines(root / task / f"{task}_test.jsonl", records)


def eval_task(root: Path, task: str, n: int = 4, prefix: str = "v") -> None:
    """A validation/test task with only its default k-shot train and dev files."""
    kshot(root, task, "train", [rec(task, f"{prefix}{task} train {i}") for i in range(n)])
    kshot(root, task, "dev", [rec(task, f"{prefix}{task} dev {i}") for i in range(n)])


def train_task(root: Path, task: str, n: int = 5) -> None:
    """A training task with a held-out file and one k-shot pair."""
    held_out(root, task, [rec(task, f"{task} test {i}") for i in range(n)])
    kshot(root, task, "train", [rec(task, f"{task} kshot {i}") for i in range(2)])
    kshot(root, task, "dev", [rec(task, f"{task} kshot dev {i}") for i in range(2)])


def small_suite(train: Sequence[str] = ("ta", "tb"), test: Sequence[str] = ("ea",),
                **kwargs: Any) -> CrossFitSuite:
    """A suite over made-up task names."""
    return CrossFitSuite(SuiteSpec("small", "a test suite", tuple(train), tuple(test)), **kwargs)


def load_local(root: Path, suite: CrossFitSuite | None = None, skip: bool = False) -> Suite:
    """Load ``suite`` (default :func:`small_suite`) from ``root``."""
    return (suite or small_suite()).load(DataOptions(data_dir=root, skip_bad_records=skip))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory for :func:`small_suite`: training tasks ta, tb; test task ea."""
    root = tmp_path / "crossfit"
    train_task(root, "ta")
    train_task(root, "tb")
    eval_task(root, "ea")
    return root


def inputs(records: Iterable[TaskRecord]) -> list[str]:
    """The inputs of ``records``, in order."""
    return [r.input for r in records]


# -- suites -----------------------------------------------------------------------------------


def test_paper_lists_have_the_appendix_sizes() -> None:
    assert len(CLS45_TRAIN) == 34 and len(set(CLS45_TRAIN)) == 34
    assert len(CLS45_TEST) == 15 and len(set(CLS45_TEST)) == 15
    assert len(CLS23_TRAIN) == 28 and len(set(CLS23_TRAIN)) == 28
    assert not set(CLS45_TRAIN) & set(CLS45_TEST)
    assert not set(CLS23_TRAIN) & set(CLS45_TEST)


def test_paper_lists_spot_checks() -> None:
    assert CLS45_TRAIN[0] == "superglue-rte" and CLS45_TRAIN[-1] == "kilt_fever"
    assert {"glue-sst2", "imdb", "tweet_eval-irony", "ethos-directed_vs_generalized"} <= set(
        CLS45_TRAIN)
    assert CLS45_TEST[0] == "tweet_eval-stance_feminist" and CLS45_TEST[-1] == "yelp_polarity"
    assert {"ag_news", "anli", "superglue-cb", "wiki_qa"} <= set(CLS45_TEST)
    assert CLS23_TRAIN[:3] == ("blimp-ellipsis_n_bar_2", "blimp-sentential_negation_npi_scope",
                               "crows_pairs")
    assert {"hellaswag", "openbookqa", "piqa", "sciq", "quartz-no_knowledge"} <= set(CLS23_TRAIN)
    assert "glue-sst2" not in CLS23_TRAIN


def test_registered_suites_and_roles() -> None:
    by_name = {s.name: s for s in SUITES}
    assert list(by_name) == ["cls45", "cls23", "nli", "para", "mcqa"]
    for sampler in SUITES:
        assert isinstance(sampler, TaskSampler) and sampler.needs_data
        roles = sampler.roles()
        assert set(roles) == set(TaskRole)
        assert roles[TaskRole.VALIDATION] == roles[TaskRole.TEST]
        assert not set(roles[TaskRole.TRAIN]) & set(roles[TaskRole.TEST])
    cls45, cls23 = by_name["cls45"].roles(), by_name["cls23"].roles()
    assert (len(cls45[TaskRole.TRAIN]), len(cls45[TaskRole.TEST])) == (34, 15)
    assert len(cls23[TaskRole.TRAIN]) == 28
    assert cls23[TaskRole.TEST] == cls45[TaskRole.TEST] == list(CLS45_TEST)
    assert cls23[TaskRole.VALIDATION] == cls45[TaskRole.VALIDATION] == list(CLS45_TEST)
    nli = by_name["nli"].roles()
    assert nli[TaskRole.TEST] == ["anli", "glue-mnli", "glue-qnli", "glue-rte", "glue-wnli",
                                  "scitail", "sick", "superglue-cb"]
    assert "sick" in NON_NLI_TO_NLI_TRAIN and "sick" not in nli[TaskRole.TRAIN]
    assert len(nli[TaskRole.TRAIN]) == 54
    para = by_name["para"].roles()
    assert para[TaskRole.TEST] == ["glue-mrpc", "glue-qqp", "medical_questions_pairs", "paws"]
    assert len(para[TaskRole.TRAIN]) == 59
    mcqa = by_name["mcqa"].roles()
    assert len(mcqa[TaskRole.TEST]) == 22 and "hellaswag" in mcqa[TaskRole.TEST]
    assert len(mcqa[TaskRole.TRAIN]) == 37
    assert any("sick" in r for r in SUITE_SPECS[2].remarks)


def test_registered_through_the_hook() -> None:
    registered: list[Any] = []
    crossfit.register_task_samplers(registered.append)
    assert [s.name for s in registered] == ["cls45", "cls23", "nli", "para", "mcqa"]
    pm = PluginManager(load_entry_points=False)
    pm.register(crossfit, name="crossfit-test")
    assert {"cls45", "cls23", "nli", "para", "mcqa"} <= set(pm.registry("suite").names())
    assert pm.registry("suite").get("cls45").roles()[TaskRole.TRAIN] == list(CLS45_TRAIN)


def test_every_listed_task_can_come_from_the_hub_except_mcqa() -> None:
    for sampler in SUITES:
        tasks = {t for names in sampler.roles().values() for t in names}
        missing = {t for t in tasks if t not in HUB_TASKS and t not in OVERSIZED}
        if sampler.name == "mcqa":
            assert missing
        else:
            assert not missing, (sampler.name, missing)


# -- reader -----------------------------------------------------------------------------------


def test_local_suite_roles_files_and_order(data: Path) -> None:
    suite = load_local(data)
    assert [t.name for t in suite.train] == ["ta", "tb"]
    assert [t.name for t in suite.validation] == ["ea"] == [t.name for t in suite.test]
    # training: <task>_test.jsonl first, then k-shot train, dev; file order kept
    assert inputs(suite.train[0]) == (
        [f"ta test {i}" for i in range(5)] + ["ta kshot 0", "ta kshot 1", "ta kshot dev 0",
                                              "ta kshot dev 1"])
    # validation: the default k-shot train + dev files
    assert inputs(suite.validation[0]) == (
        [f"vea train {i}" for i in range(4)] + [f"vea dev {i}" for i in range(4)])
    assert all(r.task == "ta" for r in suite.train[0])
    assert any(n.startswith("read MetaICL files from") for n in suite.notes)
    assert any("removed nothing" in n for n in suite.notes)
    # deterministic
    assert load_local(data).train == suite.train


def test_training_tasks_read_every_kshot_file_sorted_and_dedupe(tmp_path: Path) -> None:
    root = tmp_path / "d"
    eval_task(root, "ea")
    # no <task>_test.jsonl; files for two k and two seeds; a record repeated across files
    kshot(root, "ta", "dev", [rec("ta", "k16 s13 dev")], k=16, seed=13)
    kshot(root, "ta", "train", [rec("ta", "shared"), rec("ta", "k16 s13 train")], k=16, seed=13)
    kshot(root, "ta", "train", [rec("ta", "k8 s100 train"), rec("ta", "shared")], k=8, seed=100)
    write_lines(root / "ta" / "notes.txt", ["not data"])
    suite = load_local(root, small_suite(train=("ta",)))
    assert inputs(suite.train[0]) == ["k8 s100 train", "shared", "k16 s13 train", "k16 s13 dev"]
    assert any("duplicate" in n and "ta (1)" in n for n in suite.notes)
    assert any("without <task>_test.jsonl" in n and "ta" in n for n in suite.notes)


def test_k_and_seed_choose_the_validation_files(data: Path) -> None:
    kshot(data, "ea", "train", [rec("ea", "eight")], k=8, seed=13)
    kshot(data, "ea", "dev", [rec("ea", "eight dev")], k=8, seed=13)
    suite = load_local(data, small_suite(k=8, seed=13))
    assert inputs(suite.validation[0]) == ["eight", "eight dev"]


def test_kshot_settings_reach_the_suite_from_the_run_config(data: Path, monkeypatch,
                                                            tmp_path: Path) -> None:
    """``--kshot-k`` / ``--kshot-seed`` are run settings that pick the validation files."""
    kshot(data, "ea", "train", [rec("ea", "eight")], k=8, seed=13)
    kshot(data, "ea", "dev", [rec("ea", "eight dev")], k=8, seed=13)
    settings = CrossFitSettings(kshot_k=8, kshot_seed=13)
    suite = small_suite().load(DataOptions(data_dir=data, settings=settings))
    assert inputs(suite.validation[0]) == ["eight", "eight dev"]
    with pytest.raises(MetaloraError, match="kshot_k must be at least 1, got 0"):
        small_suite().load(DataOptions(data_dir=data, settings=CrossFitSettings(kshot_k=0)))
    seen: list[DataOptions] = []
    monkeypatch.setattr(CrossFitSuite, "load", lambda self, options: seen.append(options)
                        or Suite(name=self.name, train=[], validation=[], test=[]))
    from metalora.runs.engine import Engine
    from tests.conftest import make_config

    engine = Engine(make_config(PluginManager(), tasks="cls45", data_dir=str(tmp_path),
                                kshot_k=8, kshot_seed=13, model="tiny"), PluginManager())
    engine.load_suite()
    assert seen[0].settings == CrossFitSettings(kshot_k=8, kshot_seed=13)


def test_plain_jsonl_folders_are_read_with_disjoint_validation_and_test(tmp_path: Path) -> None:
    """``<task>/*.jsonl`` without MetaICL names: all records train; val/test split in two."""
    root = tmp_path / "plain"
    write_lines(root / "ta" / "b.jsonl", [rec("ta", f"ta b {i}") for i in range(2)])
    write_lines(root / "ta" / "a.jsonl", [rec("ta", f"ta a {i}") for i in range(3)])
    write_lines(root / "tb" / "data.jsonl", [rec("tb", f"tb {i}") for i in range(4)])
    write_lines(root / "ea" / "records.jsonl", [rec("ea", f"ea {i}") for i in range(9)])
    suite = load_local(root)
    assert inputs(suite.train[0]) == [f"ta a {i}" for i in range(3)] + ["ta b 0", "ta b 1"]
    validation, test = inputs(suite.validation[0]), inputs(suite.test[0])
    assert len(validation) == 4 and len(test) == 5
    assert sorted(validation + test) == sorted(f"ea {i}" for i in range(9))
    assert validation == sorted(validation, key=lambda x: int(x.split()[1]))  # file order
    assert inputs(load_local(root).validation[0]) == validation  # seeded: the same every time
    assert any("disjoint seeded halves" in n and "ea" in n for n in suite.notes)
    assert not any("k-shot files only" in n for n in suite.notes)
    write_lines(root / "ea" / "records.jsonl", [rec("ea", "alone")])
    with pytest.raises(MetaloraError, match="task 'ea' has 1 record"):
        load_local(root)


def test_test_tasks_prefer_the_held_out_file(data: Path) -> None:
    held_out(data, "ea", [rec("ea", "held out")])
    suite = load_local(data)
    assert inputs(suite.test[0]) == ["held out"]
    assert len(suite.validation[0]) == 8


def test_test_tasks_fall_back_to_other_seeds_without_validation_records(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = rec("ea", "vea train 0")  # also a validation record: left out of test
    kshot(data, "ea", "train", [shared, rec("ea", "seed 13 a")], seed=13)
    kshot(data, "ea", "dev", [rec("ea", "seed 13 b")], seed=13)
    kshot(data, "ea", "train", [rec("ea", "other k")], k=8, seed=13)  # other k: not used
    suite = load_local(data)
    assert inputs(suite.test[0]) == ["seed 13 a", "seed 13 b"]
    assert any("seeds other than 100" in n and "leaving out 1 record" in n for n in suite.notes)


def test_test_tasks_without_other_files_use_validation_and_say_so(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        suite = load_local(data)
    assert suite.test[0].records == suite.validation[0].records
    assert any("tested on their validation examples: ea" in n for n in suite.notes)
    assert "tested on their validation examples" in caplog.text


BAD_LINES: list[tuple[str, str, str]] = [
    ("malformed-json", '{"task": "ta", "input": "x", ', "malformed JSON"),
    ("not-an-object", "[1, 2, 3]", "expected a JSON object"),
    ("no-options-field", json.dumps({"task": "ta", "input": "x", "output": "positive"}),
     "no options"),
    ("empty-options", json.dumps(rec("ta", "x", "positive", [])), "no options"),
    ("output-not-an-option", json.dumps(rec("ta", "x", "great")), "'great' is not one of"),
    ("no-input", json.dumps({"task": "ta", "output": "positive", "options": SENTIMENT}),
     "no 'input'"),
    ("output-not-a-string", json.dumps(rec("ta", "x", 1)), "'output' must be a string"),  # type: ignore[arg-type]
    ("options-not-strings", json.dumps(rec("ta", "x", "1", [1, 2])), "list of strings"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("case", "line", "reason"), BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_records_name_file_and_line(data: Path, case: str, line: str, reason: str) -> None:
    path = held_out(data, "ta", [rec("ta", "good 1"), rec("ta", "good 2"), line,
                                 rec("ta", "good 3")])
    with pytest.raises(MetaloraError) as info:
        load_local(data)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and reason in message
    assert "\n" not in message and "--skip-bad-records" in message


def test_blank_lines_are_not_records(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", [rec("t", "a"), "", "   ", rec("t", "b")])
    contents = read_jsonl(path, "t")
    assert inputs(contents.records) == ["a", "b"] and not contents.skipped


def test_missing_task_folder_is_one_error_listing_all(data: Path) -> None:
    with pytest.raises(MetaloraError) as info:
        load_local(data, small_suite(train=("ta", "nope1", "nope2")))
    message = str(info.value)
    assert "nope1, nope2" in message and str(data) in message


def test_missing_folder_of_an_oversized_task_is_left_out(data: Path) -> None:
    suite = load_local(data, small_suite(train=("ta", "trec")))
    assert [t.name for t in suite.train] == ["ta"]
    assert "removed train task 'trec': its label set has 6 options (not read)" in suite.notes
    assert any(n.startswith("option filter") and "train trec" in n for n in suite.notes)


def test_parent_directory_gets_a_hint(data: Path) -> None:
    with pytest.raises(MetaloraError, match=f"did you mean --data-dir {re.escape(str(data))}"):
        load_local(data.parent)


def test_missing_kshot_file_is_named(data: Path) -> None:
    (data / "ea" / f"ea_{DEFAULT_K}_{DEFAULT_SEED}_dev.jsonl").unlink()
    with pytest.raises(MetaloraError, match=re.escape(f"ea_{DEFAULT_K}_{DEFAULT_SEED}_dev.jsonl")):
        load_local(data)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(MetaloraError, match="does not exist"):
        load_local(tmp_path / "absent")


def test_empty_task_is_an_error(data: Path) -> None:
    for path in (data / "tb").iterdir():
        path.write_text("\n", encoding="utf-8")
    with pytest.raises(MetaloraError, match=r"task 'tb' has no records") as info:
        load_local(data)
    assert "tb_test.jsonl" in str(info.value)


def test_task_folder_without_data_files(data: Path) -> None:
    for path in (data / "tb").iterdir():
        path.unlink()
    with pytest.raises(MetaloraError, match="has no data files"):
        load_local(data)


def test_non_utf8_file(data: Path) -> None:
    path = data / "ta" / "ta_test.jsonl"
    path.write_bytes(b'{"input": "\xff"}\n')
    with pytest.raises(MetaloraError, match="not UTF-8") as info:
        load_local(data)
    assert str(path) in str(info.value)


def test_skip_bad_records_counts_per_file(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = held_out(data, "ta", [rec("ta", "good"), "{broken", rec("ta", "x", "meh"),
                                  rec("ta", "good 2")])
    second = kshot(data, "tb", "train", [rec("tb", "ok"), "[]"])
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        suite = load_local(data, skip=True)
    assert inputs(suite.train[0])[:2] == ["good", "good 2"]
    assert f"skipped 2 bad record(s) of train task 'ta' in {first}" in suite.notes
    assert f"skipped 1 bad record(s) of train task 'tb' in {second}" in suite.notes
    assert f"{first}: skipped 2 bad record(s) (first at line 2" in caplog.text
    assert f"{second}: skipped 1 bad record(s)" in caplog.text
    assert "skipped 3 bad record(s) in total" in caplog.text


def test_skip_bad_records_counts_option_less_records(data: Path) -> None:
    path = held_out(data, "ta", [rec("ta", "good"), rec("ta", "open", "positive", [])])
    suite = load_local(data, skip=True)
    assert f"skipped 1 bad record(s) of train task 'ta' in {path}" in suite.notes
    with pytest.raises(MetaloraError, match=r"line 2: record has no options"):
        load_local(data)


def test_skipping_every_record_leaves_an_empty_task_error(data: Path) -> None:
    for path in (data / "tb").iterdir():
        write_lines(path, ["{bad"])
    with pytest.raises(MetaloraError, match=r"task 'tb' has no records \(3 bad record"):
        load_local(data, skip=True)


# -- option filter ----------------------------------------------------------------------------

FIVE = ["a", "b", "c", "d", "e"]


def test_option_filter_removes_tasks_and_examples_and_reports(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_task(data, "big")
    held_out(data, "big", [rec("big", f"q{i}", "a", FIVE) for i in range(3)])
    for path in (data / "big").glob("big_16_*"):
        path.unlink()
    held_out(data, "ta", [rec("ta", "two"), rec("ta", "five", "a", FIVE),
                          rec("ta", "four", "a", FIVE[:4])])
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        suite = load_local(data, small_suite(train=("ta", "tb", "big")))
    assert [t.name for t in suite.train] == ["ta", "tb"]
    assert inputs(suite.train[0])[:2] == ["two", "four"]
    assert "removed train task 'big': all 3 examples have more than 4 options" in suite.notes
    assert any("train task 'ta': removed 1 of" in n and "more than 4 options" in n
               for n in suite.notes)
    summary = [n for n in suite.notes if n.startswith("option filter")]
    assert summary == ["option filter (at most 4 options) removed 1 task(s) (train big) and 1 "
                       "example(s) from the remaining tasks"]
    assert "option filter (at most 4 options) removed 1 task(s)" in caplog.text


def test_open_ended_task_is_removed_as_not_multiple_choice(data: Path) -> None:
    train_task(data, "qa")
    for path in (data / "qa").iterdir():
        write_lines(path, [rec("qa", "who?", "me", [])])
    suite = load_local(data, small_suite(train=("ta", "qa")))
    assert [t.name for t in suite.train] == ["ta"]
    assert any("'qa': not multiple choice (3 examples without options)" in n
               for n in suite.notes)


def test_no_training_task_left_is_an_error(data: Path) -> None:
    for task in ("ta", "tb"):
        for path in (data / task).iterdir():
            write_lines(path, [rec(task, "q", "a", FIVE)])
    with pytest.raises(MetaloraError, match="no train tasks left"):
        load_local(data)


# -- hub converters, on real Datasets loaded from local files ---------------------------------


def hub_files(tmp_path: Path, name: str, splits: Mapping[str, list[dict]],
              fmt: str = "json") -> datasets.DatasetDict:
    """Write ``splits`` in a hub schema as json (or parquet) files and load them with datasets."""
    folder = tmp_path / "hub" / name
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        path = folder / f"{split}.{fmt}"
        if fmt == "parquet":
            datasets.Dataset.from_list(rows).to_parquet(str(path))
        else:
            write_lines(path, rows)
        files[split] = str(path)
    return datasets.load_dataset(fmt, data_files=files, cache_dir=str(tmp_path / "cache"))


def sst2_rows(n: int, offset: int = 0) -> list[dict]:
    """Rows in the schema of ``nyu-mll/glue`` config ``sst2``."""
    return [{"sentence": f"film {offset + i} ", "label": i % 2, "idx": offset + i}
            for i in range(n)]


def test_glue_sst2_from_parquet(tmp_path: Path) -> None:
    loaded = hub_files(tmp_path, "sst2", {
        "train": sst2_rows(6), "validation": sst2_rows(2, 100),
        "test": [{"sentence": "unlabelled", "label": -1, "idx": 0}]}, fmt="parquet")
    converted = convert_dataset("glue-sst2", loaded["train"])
    assert converted.dropped == 0
    assert [(r.input, r.output) for r in converted.records[:2]] == [
        ("sentence: film 0", "negative"), ("sentence: film 1", "positive")]
    assert all(r.options == ("negative", "positive") and r.task == "glue-sst2"
               for r in converted.records)
    unlabelled = convert_dataset("glue-sst2", loaded["test"])
    assert unlabelled.records == [] and unlabelled.dropped == 1


def test_hub_portions_follow_metaicl_kshot_sampling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = hub_files(tmp_path, "sst2", {"train": sst2_rows(50),
                                          "validation": sst2_rows(7, 100)})
    source = HubSource(k=4, seed=DEFAULT_SEED, train_rows=10)
    portions = source.portions("glue-sst2", loaded)
    expected = convert_dataset("glue-sst2", loaded["train"]).records
    np.random.RandomState(DEFAULT_SEED).shuffle(expected)
    assert portions.train == expected[:10]
    assert [r.input for r in portions.test] == [f"sentence: film {100 + i}" for i in range(7)]
    assert source.read("glue-sst2", TaskRole.VALIDATION).records == expected[:8]
    # large splits are shuffled as row indices and only the rows needed are converted
    monkeypatch.setattr(hub, "LARGE_SPLIT", 20)
    assert HubSource(k=4, train_rows=10).portions("glue-sst2", loaded).train == expected[:10]


def test_explicit_holdout_converts_only_the_rows_it_keeps(tmp_path: Path) -> None:
    rows = [{"title": f"t{i}", "content": f"c{i}", "label": i % 2} for i in range(30)]
    loaded = hub_files(tmp_path, "amazon", {"train": rows})
    spec = dataclasses.replace(HUB_TASKS["amazon_polarity"], holdout=(6, 3))
    source = HubSource(k=2, train_rows=4, tasks={"amazon_polarity": spec})
    portions = source.portions("amazon_polarity", loaded)
    expected = convert_dataset("amazon_polarity", loaded["train"]).records
    np.random.RandomState(42).shuffle(expected)
    assert portions.test == expected[6:9]
    kept = expected[:6]
    np.random.RandomState(DEFAULT_SEED).shuffle(kept)
    assert portions.train == kept[:4]
    assert portions.train[0].input.startswith("title: t") and " [SEP] content: c" in (
        portions.train[0].input)


def test_hub_suite_end_to_end_with_a_local_loader(tmp_path: Path) -> None:
    """The whole hub path (load, convert, portions, roles, notes), the loader reading files."""
    tables = {
        ("nyu-mll/glue", "sst2"): {"train": sst2_rows(40), "validation": sst2_rows(5, 100)},
        ("cardiffnlp/tweet_eval", "irony"): {
            "train": [{"text": f"tweet\n{i}", "label": i % 2} for i in range(30)] +
                     [{"text": "\n", "label": 0}],
            "validation": [{"text": "so ironic", "label": 1}]},
    }
    calls: list[tuple[str, str | None]] = []

    def loader(path: str, config: str | None = None, **kwargs: Any) -> datasets.DatasetDict:
        calls.append((path, config))
        return hub_files(tmp_path, f"{path}-{config}".replace("/", "_"), tables[(path, config)])

    sampler = small_suite(train=("glue-sst2",), test=("tweet_eval-irony",), k=4,
                          hub_factory=lambda **kw: HubSource(load=loader, train_rows=25, **kw))
    suite = sampler.load(DataOptions())
    assert calls == [("nyu-mll/glue", "sst2"), ("cardiffnlp/tweet_eval", "irony")]
    assert len(suite.train[0]) == 25 and len(suite.validation[0]) == 8
    assert inputs(suite.test[0]) == ["so ironic"]
    irony = suite.test[0].records[0]
    assert irony.output == "hate" and irony.options == ("0", "1", "hate", "non-irony")
    assert all("\n" not in r.input for r in suite.validation[0])
    assert any(n.startswith("converted from Hugging Face hub") for n in suite.notes)
    assert any("1 row(s) of cardiffnlp/tweet_eval (irony)" in n for n in suite.notes)


def test_tweet_eval_and_ethos_label_names(tmp_path: Path) -> None:
    loaded = hub_files(tmp_path, "offensive", {"train": [
        {"text": "@user nice", "label": 0}, {"text": "@user bad", "label": 1}]})
    records = convert_dataset("tweet_eval-offensive", loaded["train"]).records
    assert [r.output for r in records] == ["non-offensive", "hate"]
    assert records[0].options == ("hate", "non-offensive")
    dims = ("violence", "directed_vs_generalized", "gender", "race", "national_origin",
            "disability", "religion", "sexual_orientation")
    ethos = hub_files(tmp_path, "ethos", {"train": [
        {"text": f" text {i} ", **{d: (i + j) % 2 for j, d in enumerate(dims)}}
        for i in range(10)]})
    directed = convert_dataset("ethos-directed_vs_generalized", ethos["train"]).records
    assert directed[0].input == "text 0" and directed[0].output == "directed"
    assert directed[1].output == "generalied" and directed[0].options == ("directed",
                                                                          "generalied")
    assert convert_dataset("ethos-gender", ethos["train"]).records[0].output == "false"
    portions = HubSource().portions("ethos-race", ethos)
    assert (len(portions.train), len(portions.test)) == (8, 2)


def test_structured_rows_hatexplain_kilt_fever_wsc(tmp_path: Path) -> None:
    hatexplain = hub_files(tmp_path, "hatexplain", {"train": [
        {"id": "1", "post_tokens": ["you", "are", "nice"],
         "annotators": {"label": [1, 1, 2], "annotator_id": [1, 2, 3]}},
        {"id": "2", "post_tokens": ["tie"],
         "annotators": {"label": [0, 1, 2], "annotator_id": [1, 2, 3]}}]})
    converted = convert_dataset("hatexplain", hatexplain["train"])
    assert [(r.input, r.output) for r in converted.records] == [("you are nice", "normal")]
    assert converted.dropped == 1
    fever = hub_files(tmp_path, "fever", {"train": [
        {"id": "1", "input": "Lil Wayne has\nreleased albums.",
         "output": [{"answer": "SUPPORTS", "provenance": []}]}]})
    record = convert_dataset("kilt_fever", fever["train"]).records[0]
    assert (record.input, record.output, record.options) == (
        "Lil Wayne has released albums.", "SUPPORTS", ("REFUTES", "SUPPORTS"))
    wsc = hub_files(tmp_path, "wsc", {"train": [
        {"text": "Mark told Pete.", "span1_index": 0, "span2_index": 2, "span1_text": "Mark",
         "span2_text": "he", "idx": 0, "label": 1}]})
    assert convert_dataset("superglue-wsc", wsc["train"]).records[0].input == (
        "text: Mark told Pete. [SEP] span1_textMark [SEP] span2_text: he")


def test_multiple_choice_qa_rows(tmp_path: Path) -> None:
    hellaswag = hub_files(tmp_path, "hellaswag", {"train": [
        {"ctx": "A man sits", "endings": ["e0", "e1", "e2", "e3"], "label": "2"},
        {"ctx": "unlabelled", "endings": ["a", "b", "c", "d"], "label": ""}]})
    converted = convert_dataset("hellaswag", hellaswag["train"])
    assert converted.dropped == 1
    assert converted.records[0].output == "e2" and converted.records[0].answer_index == 2
    obqa = hub_files(tmp_path, "obqa", {"train": [
        {"id": "1", "question_stem": "Sun is a", "answerKey": "B",
         "choices": {"text": ["moon", "star", "rock", "cat"], "label": ["A", "B", "C", "D"]}}]})
    record = convert_dataset("openbookqa", obqa["train"]).records[0]
    assert (record.input, record.output, record.options) == (
        "Sun is a", "star", ("moon", "star", "rock", "cat"))
    sciq = hub_files(tmp_path, "sciq", {"train": [
        {"question": f"Q{i}?", "distractor1": "d1", "distractor2": "d2", "distractor3": "d3",
         "correct_answer": "yes", "support": "Because."} for i in range(4)] + [
        {"question": "no support", "distractor1": "d1", "distractor2": "d2",
         "distractor3": "d3", "correct_answer": "yes", "support": ""}]})
    first = convert_dataset("sciq", sciq["train"])
    assert first.dropped == 1 and first.records[0].input == "Because. Q0?"
    assert all(sorted(r.options) == ["d1", "d2", "d3", "yes"] and r.output == "yes"
               for r in first.records)
    assert first.records == convert_dataset("sciq", sciq["train"]).records  # deterministic


def test_schema_mismatch_and_unknown_labels_are_one_line_errors(tmp_path: Path) -> None:
    wrong = hub_files(tmp_path, "wrong", {"train": [{"text": "no sentence column", "label": 0}]})
    with pytest.raises(MetaloraError, match=r"nyu-mll/glue \(sst2\) has no column 'sentence'"):
        convert_dataset("glue-sst2", wrong["train"])
    odd = hub_files(tmp_path, "odd", {"train": [{"sentence": "x", "label": 7, "idx": 0}]})
    with pytest.raises(MetaloraError, match="label 7"):
        convert_dataset("glue-sst2", odd["train"])
    with pytest.raises(MetaloraError, match="no hub converter for task 'squad'"):
        convert_dataset("squad", odd["train"])
    with pytest.raises(MetaloraError, match="no split 'train_r1'"):
        HubSource().portions("anli", odd)


def test_hub_check_prefilters_oversized_and_rejects_unconverted() -> None:
    by_name = {s.name: s for s in SUITES}
    oversized = HubSource().check(by_name["nli"].roles())
    assert oversized == {t: OVERSIZED[t] for t in NON_NLI_TO_NLI_TRAIN if t in OVERSIZED}
    assert HubSource().check(by_name["cls45"].roles()) == {}
    with pytest.raises(MetaloraError, match=r"no Hugging Face hub converter for \d+ task") as info:
        HubSource().check(by_name["mcqa"].roles())
    assert "--data-dir" in str(info.value) and "biomrc" in str(info.value)


def test_prefiltered_tasks_are_reported_without_download(tmp_path: Path) -> None:
    def loader(path: str, config: str | None = None, **kwargs: Any) -> datasets.DatasetDict:
        assert path == "nyu-mll/glue"
        return hub_files(tmp_path, "sst2", {"train": sst2_rows(40),
                                            "validation": sst2_rows(3, 100)})

    sampler = small_suite(train=("glue-sst2", "trec"), test=("glue-sst2",),
                          hub_factory=lambda **kw: HubSource(load=loader, **kw))
    suite = sampler.load(DataOptions())
    assert [t.name for t in suite.train] == ["glue-sst2"]
    assert ("removed train task 'trec': its label set has 6 options (not read)"
            in suite.notes)


def test_unreachable_hub_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    sampler = small_suite(train=("glue-sst2",), test=("ag_news",),
                          hub_factory=lambda **kw: HubSource(cache_dir=tmp_path / "c", **kw))
    with pytest.raises(MetaloraError) as info:
        sampler.load(DataOptions())
    message = str(info.value)
    assert "Hugging Face hub is unreachable" in message and "--data-dir" in message
    assert "nyu-mll/glue (sst2)" in message and "\n" not in message


def test_other_load_failures_are_one_line_errors() -> None:
    def not_found(path: str, config: str | None = None, **kwargs: Any) -> None:
        from datasets.exceptions import DatasetNotFoundError

        raise DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub\nmore")

    def broken(path: str, config: str | None = None, **kwargs: Any) -> None:
        raise RuntimeError("Dataset scripts are no longer supported, but found x.py")

    with pytest.raises(MetaloraError, match="was not found") as info:
        HubSource(load=not_found).read("imdb", TaskRole.TRAIN)
    assert "\n" not in str(info.value)
    with pytest.raises(MetaloraError, match="RuntimeError: Dataset scripts"):
        HubSource(load=broken).read("imdb", TaskRole.TRAIN)
