"""The README's set-up commands: exactly two, and CI runs both verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMPTY_CACHES = ("METALORA_CACHE_DIR", "XDG_CACHE_HOME", "HF_HOME", "PIP_CACHE_DIR")


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def _ci_lines() -> list[str]:
    return (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_readme_gives_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    demo, tests = commands
    assert "metalora run" in demo and "--tasks demo" in demo
    assert "pytest" in tests
    for command in commands:
        assert command.index("-c constraints.txt torch") < command.index(" -e ")
    assert "[" not in demo.split("metalora run")[0], "the demo installs no extra"


def test_ci_runs_both_readme_commands_verbatim_the_demo_first_with_empty_caches():
    ci = _ci_lines()
    demo, tests = _setup_commands()
    assert demo in ci and tests in ci
    assert ci.index(demo) < ci.index(tests)
    body = ci[[i for i, line in enumerate(ci) if line.startswith("demo()")][0]:ci.index(demo)]
    exported = " ".join(line for line in body if line.strip().startswith("export "))
    for variable in EMPTY_CACHES:
        assert f'{variable}="$empty/' in exported, variable
    assert any(line.strip() == "rm -rf .venv" for line in body)  # a fresh venv
    between = ci[ci.index(demo):ci.index(tests)]
    assert "rm -rf .venv" in between  # the tests get a fresh venv too
    assert any("grep -q \"Test results on 'demo'\"" in line for line in between)


def test_constraints_pin_torch_and_keep_torchvision_out():
    lines = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "torch==2.13.0" in lines
    assert not any(line.startswith("torchvision") for line in lines)


def test_ci_also_runs_ruff_and_mypy_after_the_tests():
    ci = _ci_lines()
    _, tests = _setup_commands()
    after = ci[ci.index(tests) + 1:]
    assert any(line.strip() == "ruff check . && mypy" for line in after)
