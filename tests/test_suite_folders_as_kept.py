"""Suite folders as people keep them: nothing in them is silently ignored or silently counted.

Every bad file is built in the test. A folder may hold its role folders, task files
(``<task>.jsonl``, the extension in any case) and the files people keep beside data
(README, LICENSE, hidden files), which are not read; anything else is one error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metalora import DataOptions, MetaloraError
from metalora.cli.app import build_app
from metalora_plugins.crossfit.folder import folder_suite
from tests.test_folder_suite import write_task

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    write_task(root / "train" / "alpha.jsonl", "alpha", 14)
    write_task(root / "test" / "delta.jsonl", "delta", 14)
    return root


def _load(path: Path):
    return folder_suite(path).load(DataOptions())


def test_an_upper_case_extension_is_a_task_file_and_no_task_vanishes(folder):
    write_task(folder / "train" / "beta.JSONL", "beta", 14)
    assert [t.name for t in _load(folder).train] == ["alpha", "beta"]


@pytest.mark.parametrize("stray", ["labels.csv", "notes.txt", "old/"])
def test_anything_else_in_a_role_folder_is_one_error_naming_it(folder, stray):
    path = folder / "train" / stray.rstrip("/")
    if stray.endswith("/"):
        write_task(path / "inner.jsonl", "inner", 3)  # a subfolder of task files
    else:
        path.write_text("a,b\n")
    with pytest.raises(MetaloraError, match=rf"holds {stray}, which is not a task file"):
        folder_suite(folder)


def test_files_people_keep_beside_data_are_accepted_and_not_read(folder):
    (folder / "README.md").write_text("# my tasks\n")
    (folder / "LICENSE").write_text("CC BY\n")
    (folder / "train" / "README.txt").write_text("about alpha\n")
    (folder / "train" / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / ".git").mkdir()
    loaded = _load(folder)
    assert [t.name for t in loaded.train] == ["alpha"]
    (folder / "data.csv").write_text("x\n")
    with pytest.raises(MetaloraError, match="has data.csv; it may hold only the folders"):
        folder_suite(folder)


def test_a_file_saved_with_a_byte_order_mark_loads(folder):
    path = folder / "train" / "alpha.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as spreadsheet tools save UTF-8
    assert len(_load(folder).train[0]) == 14


@pytest.mark.parametrize(("options", "output", "message"), [
    (["yes"], "yes", "record has 1 option; a multiple-choice record needs at least 2"),
    (["yes", "yes", "no"], "yes", "option 'yes' appears twice"),
    (["yes", " ", "no"], "yes", "option 2 of .* is empty"),
])
def test_records_that_are_not_multiple_choice_are_refused_with_file_and_line(
        folder, options, output, message):
    bad = {"task": "alpha", "input": "odd", "output": output, "options": options}
    write_task(folder / "train" / "alpha.jsonl", "alpha", 14, extra=[bad])
    with pytest.raises(MetaloraError, match=rf"alpha.jsonl, line 15: {message}"):
        _load(folder)


def test_an_empty_task_file_says_it_is_empty(folder):
    (folder / "test" / "delta.jsonl").write_text("\n")
    with pytest.raises(MetaloraError, match=r"delta.jsonl is empty: a task file needs at least "
                                            r"one record"):
        _load(folder)


def test_a_task_file_given_as_the_suite_is_one_clear_error(folder):
    with pytest.raises(MetaloraError, match="is a task file, not a suite"):
        folder_suite(folder / "train" / "alpha.jsonl")


def test_metalora_tasks_path_is_the_dry_run_the_docs_promise(plugins, folder):
    app = build_app(plugins)
    good = runner.invoke(app, ["tasks", str(folder)], color=False)
    assert good.exit_code == 0, good.output
    assert "alpha" in good.output and "14" in good.output and "delta" in good.output
    (folder / "test" / "delta.jsonl").write_text(json.dumps(
        {"input": "x", "output": "a", "options": ["a"]}) + "\n")
    bad = runner.invoke(app, ["tasks", str(folder)], color=False)
    assert bad.exit_code == 1
    assert "delta.jsonl, line 1: record has 1 option" in bad.output
    write_task(folder / "test" / "delta.jsonl", "delta", 6)  # too few to evaluate
    short = runner.invoke(app, ["tasks", str(folder)], color=False)
    assert short.exit_code == 1 and "evaluation needs more than the 10 support" in short.output
