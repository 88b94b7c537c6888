"""The CLI through Typer's CliRunner, bad input included."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.cli.options import option_help
from metalora.config import all_setting_infos
from metalora.errors import MetaloraError

runner = CliRunner()


@pytest.fixture(scope="module")
def app(plugins):
    return build_app(plugins)


def invoke(app, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False, color=False)


def test_help_everywhere(app):
    for args in ([], ["run"], ["plugins"], ["tasks"]):
        result = invoke(app, *args, "--help")
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output
    run_help = invoke(app, "run", "--help").output
    for option in ("--learner", "--tasks", "--model", "--config", "--adapt-lr", "--seeds"):
        assert option in run_help


def test_run_help_fits_80_columns_and_never_cuts_a_name_or_a_default(app, plugins,
                                                                       monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = invoke(app, "run", "--help").output
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    infos = all_setting_infos(plugins)
    for info in infos.values():
        flag = info.name.replace("_", "-")
        assert (f"--{flag} / --no-{flag}" if info.type is bool else f"--{flag} ") in text
        default = re.search(r"\[default: [^\]]*\]", option_help(info).replace("\\[", "["))
        assert default[0] in " ".join(text.split()), f"the default of {info.name} is cut"
    lines, panels = text.splitlines(), []
    for i, line in enumerate(lines):  # a panel title, its continuation lines joined
        if not line or line.startswith(" "):
            continue
        title, j = line, i + 1
        while (not title.endswith(":") and j < len(lines) and lines[j].startswith("  ")
               and "--" not in lines[j]):
            title, j = f"{title} {lines[j].strip()}", j + 1
        if title.endswith(":"):
            panels.append(title)
    assert panels[0] == "Run:" and panels[-1] == "Options:"
    assert {p.removeprefix("Settings of ").rstrip(":") for p in panels[1:-1]} == {
        ", ".join(i.owners) for i in infos.values() if "run" not in i.owners}
    assert "structured-lora" in invoke(app, "settings").output  # no name split at a hyphen


def test_settings_describes_one_plugins_settings_in_full(app, plugins):
    text = invoke(app, "settings", "abmll").output
    for info in all_setting_infos(plugins).values():
        assert (f"--{info.name.replace('_', '-')} " in text) == ("abmll" in info.owners)
    assert "ABMLL c, the initial log-variance" in text and "[default: -20.0]" in text
    assert "(also a setting of maml, reptile" in " ".join(text.split())  # inner_steps is shared
    core = invoke(app, "settings", "run").output
    assert "--adapt-lr <float>" in core and "--beta" not in core
    listing = invoke(app, "settings").output
    assert "normal-gamma" in listing and "a0, b0, prior_jacobian" in listing
    bad = runner.invoke(app, ["settings", "abml"], color=False)
    assert bad.exit_code == 1
    assert "unknown plugin with settings 'abml'; valid choices: abmll," in bad.output


def test_plugins_lists_implementations_with_their_package(app, plugins, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(app, "plugins")
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    sections = [line for line in result.output.splitlines() if line.endswith("):")]
    assert sections == [f"{kind.capitalize()}s ({len(plugins.registry(kind).names())}):"
                        for kind in ("learner", "prior", "suite", "metric", "calibrator", "pruner",
                                     "logger")]
    for reg in plugins.registrations():
        assert f"\n  {reg.name} " in result.output
    assert "Amortized Bayesian Meta-Learning for LoRA" in result.output
    assert "[package metalora, plugin crossfit]" in result.output


def test_tasks_lists_suites_and_the_tasks_of_one(app):
    suites = invoke(app, "tasks")
    assert suites.exit_code == 0 and "demo" in suites.output
    demo = invoke(app, "tasks", "demo")
    assert demo.exit_code == 0
    assert "demo-sentiment_review" in demo.output and "test" in demo.output


def test_run_writes_a_run_directory_and_prints_the_table(app, tmp_path):
    result = invoke(app, "run", "--learner", "pretrained,lora", "--tasks", "demo", "--model",
                    "tiny", "--epochs", "1", "--output-dir", str(tmp_path), "--run-name", "r",
                    "--max-train-tasks", "2", "--query-cap", "16")
    assert result.exit_code == 0, result.output
    assert "pretrained" in result.output and "lora" in result.output
    assert "Acc" in result.output and "ECE" in result.output
    run_dir = tmp_path / "r"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "tiny" and config["learner"] == ["pretrained", "lora"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["learners"]) == {"pretrained", "lora"}
    assert (run_dir / "lora" / "seed-0" / "adapters.safetensors").exists()


def test_config_file_is_read_and_the_command_line_overrides_it(app, tmp_path):
    config = tmp_path / "settings.toml"
    config.write_text('learner = "pretrained"\ntasks = "demo"\nmodel = "tiny"\n'
                      'epochs = 3\nquery_cap = 8\nadapt_lr = 0.5\n')
    result = invoke(app, "run", "--config", str(config), "--query-cap", "4",
                    "--output-dir", str(tmp_path), "--run-name", "c")
    assert result.exit_code == 0, result.output
    resolved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert resolved["query_cap"] == 4  # command line wins
    assert resolved["epochs"] == 3 and resolved["adapt_lr"] == 0.5  # from the file
    yaml_config = tmp_path / "settings.yaml"
    yaml_config.write_text("learner: [pretrained]\nmodel: tiny\nquery_cap: 2\n")
    result = invoke(app, "run", "--config", str(yaml_config), "--output-dir", str(tmp_path),
                    "--run-name", "y")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "y" / "config.json").read_text())["query_cap"] == 2


def _learner_lrs(run_dir) -> dict[str, float]:
    recorded = json.loads((run_dir / "config.json").read_text())["learner_settings"]
    return {name: values["lr"] for name, values in recorded.items()}


def test_learner_tables_set_one_learners_values_and_config_json_round_trips(app, tmp_path):
    """``[lora]`` applies to lora only; a run's config.json passed back keeps each lr."""
    config = tmp_path / "settings.toml"
    config.write_text('learner = ["lora", "structured-lora"]\nmodel = "tiny"\nepochs = 0\n'
                      'max_eval_tasks = 1\nquery_cap = 2\n'
                      '[lora]\nlr = 0.001\n["structured-lora"]\nlr = 0.002\n')
    common = ("--output-dir", str(tmp_path))
    assert invoke(app, "run", "--config", str(config), *common, "--run-name", "a").exit_code == 0
    assert _learner_lrs(tmp_path / "a") == {"lora": 0.001, "structured-lora": 0.002}
    again = invoke(app, "run", "--config", str(tmp_path / "a" / "config.json"), *common,
                   "--run-name", "b")
    assert again.exit_code == 0, again.output
    assert _learner_lrs(tmp_path / "b") == {"lora": 0.001, "structured-lora": 0.002}
    first = json.loads((tmp_path / "a" / "config.json").read_text())["learner_settings"]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["learner_settings"] == first
    # the command line overrides the learner tables too
    assert invoke(app, "run", "--config", str(config), "--lr", "0.003", *common,
                  "--run-name", "c").exit_code == 0
    assert _learner_lrs(tmp_path / "c") == {"lora": 0.003, "structured-lora": 0.003}


@pytest.mark.parametrize(("content", "message"), [
    ('[lora]\ninner_lr = 0.1\n',
     "'inner_lr' in the config file's 'lora' table is not a setting of lora; its settings: "),
    ('[learner_settings.nope]\nlr = 0.1\n', "unknown learner 'nope' in learner_settings; "
                                              "valid choices: "),
])
def test_a_bad_learner_table_is_one_clear_line(app, tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    result = runner.invoke(app, ["run", "--config", str(path)], color=False)
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output
    assert "lr" in error_lines[0] or "lora" in error_lines[0]


def test_commands_other_than_run_refuse_torchrun_in_one_line(app, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["prune", "--learner", "pretrained", "--model", "tiny",
                                 "--ratio", "0.1"], color=False)
    assert result.exit_code == 1
    assert ("metalora prune runs in one process (WORLD_SIZE=2); start it without torchrun"
            in result.output)
    assert invoke(app, "plugins").exit_code == 1


BAD_INPUT = [
    (["run", "--learner", "nope", "--model", "tiny"],
     "unknown learner 'nope'; valid choices: ", "lora"),
    (["run", "--tasks", "nosuchsuite", "--model", "tiny"],
     "unknown suite 'nosuchsuite'; valid choices: ", "demo"),
    (["run", "--learner", "pretrained", "--model", "/no/such/model/dir"],
     "model path '/no/such/model/dir' does not exist", "tiny"),
    (["run", "--model", "tiny", "--data-dir", "/no/such/data"],
     "data directory '/no/such/data' does not exist", None),
    (["run", "--train-loss", "sideways"], "setting 'train_loss' got 'sideways'", "vocab"),
    (["tasks", "nosuchsuite"], "unknown suite 'nosuchsuite'", "demo"),
]


@pytest.mark.parametrize(("args", "message", "choice"), BAD_INPUT)
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(app, tmp_path, args, message, choice):
    result = runner.invoke(app, [*args, "--output-dir", str(tmp_path)] if args[0] == "run"
                           else args, color=False)
    assert result.exit_code == 1, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    error_lines = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, text
    assert message in error_lines[0]
    if choice:
        assert choice in error_lines[0]


@pytest.mark.parametrize(("content", "suffix", "message"), [
    ("epochs = [unclosed", ".toml", "is malformed"),
    ("epochs: [1, 2\n", ".yaml", "is malformed"),
    ("no_such_setting = 1\n", ".toml", "unknown setting 'no_such_setting'; valid settings:"),
    ('epochs = "many"\n', ".toml", "setting 'epochs' must be int, got 'many'"),
    ("epochs = 1.5\n", ".toml", "setting 'epochs' must be int, got 1.5"),
    ("[lorra]\nlr = 0.5\n", ".toml", "unknown table [lorra]; valid tables: "),
    ("epochs: 2\nseeds: [0\n", ".yaml", "(at line 3, column 1)"),
    ("epochs: [1\n", ".cfg", "is malformed: neither TOML"),
])
def test_a_malformed_config_is_one_clear_line(app, tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    result = runner.invoke(app, ["run", "--config", str(path)], color=False)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert message in result.output


def test_a_config_file_is_read_by_its_content_or_its_name(app, tmp_path):
    from metalora.config import read_config_file

    toml = tmp_path / "settings.cfg"
    toml.write_text('[run]\nepochs = 2\n[lora]\nlr = 0.001\n')
    read = read_config_file(toml, ["lora"], ["run"])
    assert read.shared == {"epochs": 2} and read.per_learner == {"lora": {"lr": 0.001}}
    yaml_file = tmp_path / "settings.conf"
    yaml_file.write_text("epochs: 3\nlora:\n  lr: 0.002\n")
    read = read_config_file(yaml_file, ["lora"], ["run"])
    assert read.shared == {"epochs": 3} and read.per_learner == {"lora": {"lr": 0.002}}


def test_a_config_that_is_no_file_of_text_is_one_clear_line(app, tmp_path):
    binary = tmp_path / "latin1.toml"
    binary.write_bytes("epochs = 1 # caf\xe9\n".encode("latin-1"))
    for path, message in ((tmp_path, "is a directory"), (binary, "is not UTF-8 text")):
        result = runner.invoke(app, ["run", "--config", str(path)], color=False)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and message in result.output


def test_a_misspelt_learner_table_changes_nothing(app, tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[lorra]\nlr = 0.5\n")
    result = runner.invoke(app, ["run", "--config", str(path), "--learner", "lora,reptile",
                                 "--model", "tiny", "--output-dir", str(tmp_path / "runs")],
                           color=False)
    assert result.exit_code == 1
    assert "unknown table [lorra]; valid tables: " in result.output
    assert "lora" in result.output.split("valid tables:")[1]
    assert not (tmp_path / "runs").exists()


def test_missing_config_file(app, tmp_path):
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "none.toml")], color=False)
    assert result.exit_code == 1 and "does not exist" in result.output


def test_debug_shows_the_exception(app):
    with pytest.raises(MetaloraError):
        runner.invoke(app, ["--debug", "run", "--learner", "nope"], catch_exceptions=False)


def test_at_80_columns_no_value_or_task_name_is_cut(app, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(app, "run", "--learner", "pretrained,lora,structured-lora,reptile,abmll",
                    "--tasks", "demo", "--model", "tiny", "--max-train-tasks", "1",
                    "--query-cap", "2", "--no-plots", "--no-tensorboard",
                    "--output-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    for task in ("demo-sentiment_", "demo-fruit_pick"):  # task names whole (maybe wrapped)
        assert task in result.output
    assert "Per-task test results on 'demo'" in result.output


def test_the_results_table_shows_every_metric_asked_for(app, tmp_path):
    common = ["run", "--learner", "pretrained", "--tasks", "demo", "--model", "tiny",
              "--query-cap", "2", "--no-plots", "--no-tensorboard", "--output-dir",
              str(tmp_path)]
    only_nll = invoke(app, *common, "--metrics", "nll", "--no-per-task")
    assert only_nll.exit_code == 0, only_nll.output
    table = only_nll.output.split("Test results on 'demo'", 1)[1]
    assert "NLL ↓" in table and "Acc" not in table
    every = invoke(app, *common, "--metrics", "accuracy,ece,brier")
    table = every.output.split("Test results on 'demo'", 1)[1]
    assert all(label in table for label in ("Acc ↑", "ECE ↓", "Brier ↓"))
    default = invoke(app, *common, "--no-per-task")  # no --metrics: the paper's Table 1
    table = default.output.split("Test results on 'demo'", 1)[1]
    assert "Acc ↑" in table and "ECE ↓" in table and "NLL" not in table


@pytest.mark.parametrize(("args", "message"), [
    (["--learner", "blob", "--init-eps", "0"],
     "blob: init_eps 0 puts sigma at 0, where the KL is infinite"),
    (["--learner", "laplace-lora", "--prior-precision", "-1"],
     "laplace-lora: prior_precision '-1' is neither 'marglik' nor a positive number"),
    (["--learner", "laplace-lora", "--prior-precision", "evidence"],
     "laplace-lora: prior_precision 'evidence' is neither"),
])
def test_bad_uncertainty_baseline_settings_are_one_line_before_anything_loads(
        app, tmp_path, args, message):
    result = runner.invoke(app, ["run", *args, "--model", "no-such-model", "--output-dir",
                                 str(tmp_path)], color=False)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not any(tmp_path.iterdir())
