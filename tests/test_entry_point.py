"""`metalora` as a user runs it: no traceback without --debug, whatever fails and wherever.

Failures are injected at several depths (start-up, a command's body, suite
loading, model loading, the middle of a training epoch, writing results) and
through :func:`metalora.cli.main`, the console script's entry point. Each
must end in exactly one line naming what was being done and the exception's
message, and a non-zero exit status.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import metalora
from metalora import cli
from metalora.cli import app as cli_app

RUN = ["run", "--learner", "lora", "--tasks", "demo", "--model", "tiny", "--epochs", "1",
       "--max-train-tasks", "1", "--max-eval-tasks", "1", "--query-cap", "2", "--no-plots"]


def fail(exc: BaseException):
    def raiser(*args, **kwargs):
        raise exc
    return raiser


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def assert_one_line(err: str, *parts: str) -> None:
    """One ``Error:`` line, the last one (progress lines may come before), no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith("Error: while ")
    assert "Traceback" not in err and "File \"" not in err
    for part in (*parts, "run again with --debug for the traceback"):
        assert part in errors[0], errors[0]


def test_a_failure_while_starting_up(capsys, monkeypatch):
    monkeypatch.setattr(cli_app, "build_app", fail(RuntimeError("registry broke")))
    code, _, err = run_main(capsys, ["plugins"])
    assert code == 1
    assert_one_line(err, "loading plugins", "RuntimeError: registry broke")


def test_a_failure_inside_a_command(capsys, monkeypatch):
    from metalora.plugins import PluginManager

    monkeypatch.setattr(PluginManager, "registrations", fail(KeyError("kind")))
    code, _, err = run_main(capsys, ["plugins"])
    assert code == 1
    assert_one_line(err, "running 'metalora plugins'", "KeyError: 'kind'")


def test_a_failure_while_loading_the_suite(capsys, monkeypatch, tmp_path):
    from metalora_plugins.demo import DemoSuite

    monkeypatch.setattr(DemoSuite, "load", fail(OSError("disk gone")))
    code, _, err = run_main(capsys, [*RUN, "--output-dir", str(tmp_path)])
    assert code == 1
    assert_one_line(err, "loading suite 'demo'", "OSError: disk gone")


def test_a_failure_while_loading_the_model(capsys, monkeypatch, tmp_path):
    import metalora.models.tiny

    monkeypatch.setattr(metalora.models.tiny, "build_tiny", fail(MemoryError("no room")))
    code, _, err = run_main(capsys, [*RUN, "--output-dir", str(tmp_path)])
    assert code == 1
    assert_one_line(err, "loading model 'tiny'", "MemoryError: no room")


def test_a_failure_in_the_middle_of_an_epoch(capsys, monkeypatch, tmp_path):
    from metalora_plugins.lora.learner import LoraLearner

    monkeypatch.setattr(LoraLearner, "train_epoch", fail(ZeroDivisionError("deep down")))
    code, _, err = run_main(capsys, [*RUN, "--output-dir", str(tmp_path)])
    assert code == 1
    assert_one_line(err, "running lora seed 0, training epoch 1", "ZeroDivisionError: deep down")


def test_a_failure_while_writing_results(capsys, monkeypatch, tmp_path):
    import metalora.runs.engine

    monkeypatch.setattr(metalora.runs.engine, "write_results", fail(PermissionError("read-only")))
    code, _, err = run_main(capsys, [*RUN, "--output-dir", str(tmp_path)])
    assert code == 1
    assert_one_line(err, "writing the results", "PermissionError: read-only")


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(cli_app, "build_app", fail(RuntimeError("registry broke")))
    with pytest.raises(RuntimeError, match="registry broke"):
        cli.main(["--debug", "plugins"])


def test_bad_input_is_one_error_line_without_the_debug_hint(capsys):
    code, _, err = run_main(capsys, ["run", "--learner", "nope", "--model", "tiny"])
    assert code == 1
    assert err.strip().startswith("Error: unknown learner 'nope'")
    assert len(err.strip().splitlines()) == 1 and "--debug" not in err


def test_version(capsys):
    code, out, _ = run_main(capsys, ["--version"])
    assert code == 0
    assert out.strip() == f"metalora {metalora.__version__}"


STOP_WHILE_IMPORTING = """
import sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt

import metalora.cli
assert "torch" not in sys.modules, "importing the entry point imported torch"
sys.meta_path.insert(0, CtrlC())
metalora.cli.main(["plugins"])
"""


def test_ctrl_c_while_importing_is_one_line():
    done = subprocess.run([sys.executable, "-c", STOP_WHILE_IMPORTING], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == ["Interrupted while starting metalora."]


def test_debug_works_after_the_command_name_too():
    from metalora.errors import MetaloraError

    with pytest.raises(MetaloraError, match="unknown learner 'nope'"):
        cli.main(["run", "--learner", "nope", "--model", "tiny", "--debug"])
