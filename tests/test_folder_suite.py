"""Folder suites: the user's own MetaICL task files as ``--tasks PATH``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metalora import DataOptions, MetaloraError, TaskRole
from metalora.cli.app import build_app
from metalora_plugins.crossfit.folder import folder_suite

runner = CliRunner()


def write_task(path: Path, name: str, count: int, options: tuple[str, ...] = ("yes", "no"),
               extra: list[dict] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"task": name, "input": f"{name} {i}", "output": options[i % len(options)],
              "options": list(options)} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*lines, *(extra or [])]))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    write_task(root / "train" / "alpha.jsonl", "alpha", 12)
    write_task(root / "train" / "beta.jsonl", "beta", 12, ("a", "b", "c"))
    write_task(root / "validation" / "gamma.jsonl", "gamma", 12)
    six = {"task": "delta", "input": "wide", "output": "1", "options": list("123456")}
    again = {"task": "delta", "input": "delta 0", "output": "yes", "options": ["yes", "no"]}
    write_task(root / "test" / "delta.jsonl", "delta", 12, extra=[six, again])
    return root


def test_a_folder_is_read_with_roles_from_its_subfolders_and_names_from_its_files(folder):
    suite = folder_suite(folder)
    assert suite.roles() == {TaskRole.TRAIN: ["alpha", "beta"],
                             TaskRole.VALIDATION: ["gamma"], TaskRole.TEST: ["delta"]}
    loaded = suite.load(DataOptions())
    assert [t.name for t in loaded.train] == ["alpha", "beta"]
    assert [len(t) for t in loaded.train] == [12, 12]
    assert loaded.name == "mine"
    # the 6-option example is filtered and the repeated record kept once, both reported
    assert len(loaded.test[0]) == 12
    assert {r.task for r in loaded.test[0].records} == {"delta"}
    notes = " | ".join(loaded.notes)
    assert "removed 1 of 13 examples with more than 4 options" in notes
    assert "duplicate records" in notes and "delta (1)" in notes


def test_a_suite_file_lists_files_per_role_relative_to_itself_with_globs(folder, tmp_path):
    toml = folder / "suite.toml"
    toml.write_text('name = "picked"\ntrain = ["train/*.jsonl"]\ntest = ["test/delta.jsonl", '
                    '"train/alpha.jsonl"]\n')
    suite = folder_suite(toml)
    assert suite.name == "picked"
    # alpha is listed for test too: used for test only, and said so
    assert suite.roles()[TaskRole.TRAIN] == ["beta"]
    assert suite.roles()[TaskRole.TEST] == ["delta", "alpha"]
    assert any("alpha listed for training" in n for n in suite.load(DataOptions()).notes)
    yml = tmp_path / "s.yaml"
    yml.write_text(f"train: [{folder}/train/beta.jsonl]\ntest: {folder}/test/delta.jsonl\n")
    assert folder_suite(yml).roles()[TaskRole.TEST] == ["delta"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda root: (root / "notes.txt").write_text("x"),
     "has notes.txt; it may hold only the folders test, train, validation"),
    (lambda root: [p.unlink() for p in (root / "test").iterdir()],
     "lists no test task"),
    (lambda root: (root / "train" / "alpha.jsonl").write_text('{"input": "x"}\n'),
     "alpha.jsonl, line 1: record has no options"),
])
def test_a_bad_folder_is_one_line_naming_the_problem(folder, change, message):
    change(folder)
    with pytest.raises(MetaloraError, match=message.replace(".", r"\.")):
        folder_suite(folder).load(DataOptions())


@pytest.mark.parametrize(("content", "message"), [
    ('train = ["train/*.jsonl"]\ntest = ["nothing-*.jsonl"]\n', "names no file"),
    ('train = ["train/*.jsonl"]\ntest = ["test/*.jsonl"]\ntset = []\n',
     "unknown key(s) tset; valid keys: name, description, train, validation, test"),
    ('train = "train/alpha.jsonl"\ntest = [1]\n', "'test' must be a list of file paths"),
    ('train = [\n', "cannot be read"),
])
def test_a_bad_suite_file_is_one_line_naming_the_problem(folder, content, message):
    path = folder.parent / "suite.toml"
    path.write_text(content.replace("train/", f"{folder}/train/").replace("test/",
                                                                          f"{folder}/test/"))
    with pytest.raises(MetaloraError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        folder_suite(path)


def test_the_cli_lists_trains_and_resumes_a_folder_suite(plugins, folder, tmp_path,
                                                         monkeypatch):
    app = build_app(plugins)
    listed = runner.invoke(app, ["tasks", str(folder)], color=False)
    assert listed.exit_code == 0 and "gamma" in listed.output and "validation" in listed.output
    monkeypatch.chdir(folder.parent)
    result = runner.invoke(app, ["run", "--learner", "lora", "--tasks", "mine", "--model",
                                 "tiny", "--epochs", "1", "--output-dir", str(tmp_path / "runs"),
                                 "--run-name", "r", "--no-plots"], color=False)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    assert config["tasks"] == str(folder.resolve())  # recorded absolute: resumable anywhere
    metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    assert list(metrics["learners"]["lora"]["seeds"]["0"]["tasks"]) == ["delta"]
    unknown = runner.invoke(app, ["run", "--tasks", "no-such-folder", "--model", "tiny"],
                            color=False)
    assert unknown.exit_code == 1
    assert "unknown suite 'no-such-folder'; valid choices: " in unknown.output
    assert "or the path of a task folder or suite file" in unknown.output


def test_hook_suite_from_path_lets_a_plugin_read_its_own_kind_of_path(folder, tmp_path):
    from metalora import hookimpl
    from metalora.plugins import PluginManager
    from metalora_plugins.demo import DemoSuite

    class CsvSuites:
        @hookimpl
        def suite_from_path(self, path):
            return DemoSuite() if path.suffix == ".csv" else None

    manager = PluginManager()
    manager.register(CsvSuites(), name="csv-suites")
    table = tmp_path / "tasks.csv"
    table.write_text("x\n")
    assert isinstance(manager.suite(str(table)), DemoSuite)
    assert manager.suite(str(table)) is manager.suite(str(table))  # answered once, kept
    # a path the plugin declines goes to the next plugin: the built-in folder reader
    assert manager.suite(str(folder)).roles()[TaskRole.TEST] == ["delta"]
    manager.unregister("crossfit")
    with pytest.raises(MetaloraError, match="no plugin reads .* as a suite"):
        manager.suite(str(folder))


def test_the_suites_page_complete_example_makes_a_folder_suite(tmp_path, monkeypatch):
    page = (Path(__file__).parents[1] / "docs" / "suites.md").read_text(encoding="utf-8")
    example = page.split("A complete example, from nothing to a run")[1]
    script = example.split("python - <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-tasks" / "train").mkdir(parents=True)
    (tmp_path / "my-tasks" / "test").mkdir()
    exec(compile(script, "suites.md", "exec"), {})
    suite = folder_suite(Path("my-tasks")).load(DataOptions())
    assert [t.name for t in suite.train] == ["mood", "weather"]
    assert [t.name for t in suite.test] == ["food"] and 30 < len(suite.test[0]) <= 40
