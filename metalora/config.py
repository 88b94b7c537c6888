"""Run settings and their resolution: defaults < config file < command line.

The core's settings are :class:`RunSettings`; learners, priors, task
samplers and pruners may add their own (``Settings`` class attribute). All
of them live in one flat namespace: a config file (TOML, or YAML — JSON is
YAML too, so a run directory's ``config.json`` can be passed back) holds
``name = value`` pairs, and the command line uses ``--name-with-dashes``.
A table named after a learner (``[lora]``, or ``learner_settings.lora`` as in
``config.json``) sets values for that learner only, so learners that share a
setting name (``lr``) keep their own values; tables named ``run``,
``given`` or after a prior, suite or pruner are merged into the flat
namespace, and any other table is an error (:func:`read_config_file`). The
command line overrides both.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metalora.adapter_config import DEFAULT_ALPHA, DEFAULT_RANK, DEFAULT_TARGETS
from metalora.errors import MetaloraError
from metalora.plugins import PluginManager
from metalora.precision import AUTOCAST_DTYPES, WEIGHT_DTYPES
from metalora.settings import SettingInfo, coerce, field_infos, merge_infos, setting

SETTINGS_KINDS = ("learner", "prior", "suite", "pruner", "logger", "metric", "calibrator")
"""Registry kinds whose implementations may declare a ``Settings`` dataclass."""


@dataclass(frozen=True)
class RunSettings:
    """Settings of the core: what to run, on what, and the evaluation protocol."""

    learner: list[str] = setting(
        ["lora"], "Learner(s) to run, comma-separated (see `metalora plugins`).")
    tasks: str = setting("demo", "Task suite (see `metalora tasks`), or the path of a folder or "
                               "suite file of your own task files.")
    model: str = setting(
        "smollm2-135m", "Hugging Face id, local path, or alias: tiny, smollm2-135m.")
    data_dir: str | None = setting(
        None, "Directory of MetaICL-format task files (suites that read data).")
    seeds: list[int] = setting([0], "Seed(s), comma-separated; metrics report mean ± SE.")
    epochs: int = setting(1, "Passes over the training tasks.", ge=0)
    eval_every: int = setting(
        1, "Validate on the suite's validation tasks every N epochs (0 = never). Test metrics "
           "are taken at the best-validation epoch; with no validation tasks, or 0, at the "
           "last epoch.", ge=0)
    select_metric: str = setting(
        "accuracy", "Validation metric that picks the tested epoch (higher or lower is better "
                    "as the metric declares).")
    logger: list[str] = setting(
        ["tensorboard"], "Where training curves go besides log.jsonl (always written): "
                         "comma-separated loggers (see `metalora plugins`), e.g. "
                         "tensorboard,wandb; '' for none. A logger named here whose package "
                         "is missing is an error; the default is skipped with no word.")
    tensorboard: bool = setting(
        True, "Shorthand: --no-tensorboard leaves tensorboard out of the default --logger.")
    plots: bool = setting(
        True, "Write PNG figures into the run directory (needs matplotlib: "
              "pip install 'metalora[plots]').")
    batch_size: int = setting(2, "Examples per batch (paper: 2).", ge=1)
    support_batches: int = setting(
        5, "Support batches per evaluated task (support = support_batches x batch_size).", ge=1)
    query_cap: int | None = setting(
        None, "At most this many query examples per evaluated task.", ge=1)
    eval_batch_size: int = setting(8, "Batch size when scoring query examples.", ge=1)
    adapt_steps: int = setting(
        5, "Test-time adaptation steps on the support set (paper: 5; 0 = none, zero-shot).",
        ge=0)
    adapt_lr: float = setting(1e-5, "Test-time adaptation learning rate (paper: 1e-5).", ge=0)
    rank: int = setting(DEFAULT_RANK, "LoRA rank r.", ge=1)
    alpha: float = setting(DEFAULT_ALPHA, "LoRA alpha (scaling s = alpha / r).", gt=0)
    target_modules: list[str] = setting(
        list(DEFAULT_TARGETS), "Linear layers to adapt, by name, comma-separated; Llama "
                               "attention names map to other architectures' (e.g. o_proj to "
                               "out_proj or dense).")
    max_length: int = setting(
        512, "Prompt length limit in tokens (the question is truncated).", ge=1)
    train_loss: str = setting(
        "vocab", "Answer loss normalised over the vocabulary or over the options.",
        choices=("vocab", "options"))
    max_train_tasks: int | None = setting(None, "Use only the first N training tasks.", ge=1)
    max_eval_tasks: int | None = setting(None, "Evaluate only the first N test tasks.", ge=1)
    metrics: list[str] = setting([], "Metrics to report (default: every registered metric).")
    in_context: int = setting(
        0, "In-context demonstrations: put the first N support examples, with their answers, "
           "before each query's prompt (dropped from the front when over max_length). With "
           "the pretrained learner this is in-context learning; with another learner, "
           "in-context learning plus its adaptation. 0 = none.", ge=0)
    calibrate: str = setting(
        "none", "Recalibrate each evaluated task's predictions with this calibrator (see "
                "`metalora plugins`), fitted on the task's support set after test-time "
                "adaptation, e.g. temperature; none = as the learner predicts.")
    device: str = setting("auto", "Device: auto, cpu, cuda, cuda:N.")
    dtype: str = setting(
        "float32", "Model weights' dtype (adapters stay float32). On a GPU, bfloat16 halves "
                   "the weights' memory and runs the frozen model's products at the bfloat16 "
                   "rate. float16 is not offered: training in it needs loss scaling, which "
                   "metalora does not do.", choices=WEIGHT_DTYPES)
    autocast: str = setting(
        "none", "Run forward passes under torch.autocast in this dtype (on a GPU, bfloat16 "
                "saves time and activation memory); adapters, gradients and optimiser states "
                "stay float32. float16 is not offered (no loss scaling).",
        choices=tuple(AUTOCAST_DTYPES))
    tf32: bool = setting(
        False, "Allow TF32 for float32 matrix products on CUDA GPUs (Ampere and later): about "
               "8x the float32 rate, with a 10-bit mantissa. ABMLL's exact weight sample then "
               "adds its noise to the layer output instead of to W0, where TF32 would round it "
               "away. No effect on CPU.")
    gradient_checkpointing: bool = setting(
        False, "Recompute each transformer layer's activations in backward instead of storing "
               "them: less memory for about one more forward pass of time.")
    output_dir: str = setting("runs", "Directory under which run directories are created.")
    run_name: str | None = setting(None, "Name of the run directory (default: time-stamped).")
    skip_bad_records: bool = setting(
        False, "Warn about and count malformed data records instead of failing.")


@dataclass
class ResolvedConfig:
    """Every setting's value after merging defaults, the config file and the command line."""

    values: dict[str, Any]
    """Only the values that were given (file or command line); defaults are not filled in."""
    infos: dict[str, SettingInfo]
    learner_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Values for one learner each (config-file learner tables, or a run's recorded
    settings); they take precedence over :attr:`values` for that learner."""

    @property
    def run(self) -> RunSettings:
        return build_run_settings(self.values)

    def copy(self) -> ResolvedConfig:
        """A copy whose values and learner tables can change without touching this one."""
        return ResolvedConfig(values=dict(self.values), infos=self.infos,
                              learner_values={k: dict(v) for k, v in self.learner_values.items()})


def apply_recommended(config: ResolvedConfig, recommended: Mapping[str, Any],
                      learners: Collection[str]) -> list[str]:
    """Fill in a suite's recommended settings where nothing was given; return what was filled
    (``name=value``, ``learner.name=value``). A value given for a shared name (``--lr``)
    also beats a recommendation for one learner; names of learners or settings that are not
    installed are passed over."""
    applied = []
    for key, value in recommended.items():
        if isinstance(value, Mapping):
            if key not in learners:
                continue
            table = config.learner_values.setdefault(key, {})
            for name, item in value.items():
                if name in config.infos and name not in config.values and name not in table:
                    table[name] = coerce(config.infos[name], item)
                    applied.append(f"{key}.{name}={item}")
            if not table:
                config.learner_values.pop(key)
        elif key in config.infos and key not in config.values:
            config.values[key] = coerce(config.infos[key], value)
            applied.append(f"{key}={value}")
    return applied


def build_run_settings(values: Mapping[str, Any]) -> RunSettings:
    from metalora.settings import build_settings

    return build_settings(RunSettings, values)


def _setting_groups(plugins: PluginManager) -> list[list[SettingInfo]]:
    groups = [field_infos(RunSettings, "run")]
    for kind in SETTINGS_KINDS:  # the built-ins first: a clash disables the newcomer
        for reg in sorted(plugins.registry(kind), key=lambda r: (r.provider != "metalora",
                                                                  r.name)):
            settings_cls = getattr(reg.implementation, "Settings", None)
            if settings_cls is not None:
                groups.append(field_infos(settings_cls, reg.name))
    return groups


def all_setting_infos(plugins: PluginManager) -> dict[str, SettingInfo]:
    """The run settings plus every registered plugin's settings, merged by name.

    A plugin setting whose name another owner declares with another type is left out
    (:func:`setting_conflicts` says which); the rest of the command line still works.
    """
    return merge_infos(_setting_groups(plugins), conflicts={})


def setting_conflicts(plugins: PluginManager) -> dict[str, str]:
    """plugin name -> why one of its settings clashes with another owner's (and is unusable)."""
    providers = {r.name: r.provider for kind in SETTINGS_KINDS for r in plugins.registry(kind)}
    providers["run"] = "metalora"
    conflicts: dict[str, str] = {}
    merge_infos(_setting_groups(plugins), conflicts=conflicts,
                label=lambda owner: f"{owner} ({providers.get(owner, owner)})")
    return conflicts


LEARNER_TABLES_KEY = "learner_settings"
"""The key under which a run's ``config.json`` records each learner's settings."""
PLUGIN_TABLES_KEY = "plugin_settings"
"""The key under which a run's ``config.json`` records the settings of its other plugins
(every prior, the suite, the loggers), one table per owner."""


@dataclass
class ConfigFile:
    """A config file's settings: shared ones, and tables for one learner each."""

    shared: dict[str, Any]
    per_learner: dict[str, dict[str, Any]] = field(default_factory=dict)


TOML_SUFFIXES = (".toml",)
YAML_SUFFIXES = (".yaml", ".yml", ".json")


def config_sections(plugins: PluginManager) -> list[str]:
    """Tables a config file may hold besides learner tables: ``run``, ``given`` (as in a
    run's ``config.json``) and the name of every registered prior, suite and pruner (their
    settings are shared, so merged flat)."""
    names = {"run", "given"}
    for kind in ("prior", "suite", "pruner"):
        names.update(plugins.registry(kind).names())
    return sorted(names)


def parse_config_text(text: str, path: Path) -> Any:
    """TOML for ``.toml``, YAML (JSON included) for ``.yaml``/``.yml``/``.json``; any other
    name is read as TOML if it parses as TOML, else as YAML. Errors name the line."""
    where = f"config file {str(path)!r}"
    suffix = path.suffix.lower()
    if suffix not in YAML_SUFFIXES:
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            if suffix in TOML_SUFFIXES:
                raise MetaloraError(f"{where} is malformed TOML: {exc}") from None
            toml_error = exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" (at line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        if suffix in YAML_SUFFIXES:
            raise MetaloraError(f"{where} is malformed YAML: {problem}{at}") from None
        raise MetaloraError(f"{where} is malformed: neither TOML ({toml_error}) nor YAML "
                            f"({problem}{at}); name it .toml or .yaml to say which") from None


def read_config_file(path: Path, learners: Collection[str] = (),
                     sections: Collection[str] | None = None) -> ConfigFile:
    """Read a TOML or YAML (or JSON) file of settings.

    Top-level tables named after one of ``learners``, and the tables under
    ``learner_settings``, hold values for that learner; tables named in
    ``sections`` (``run``, a prior, a suite, a pruner) are merged into the shared,
    flat mapping. Any other table is an error naming the valid ones (with
    ``sections`` None, every other table is merged).
    """
    where = f"config file {str(path)!r}"
    if not path.exists():
        raise MetaloraError(f"{where} does not exist")
    if path.is_dir():
        raise MetaloraError(f"{where} is a directory; give the settings file in it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MetaloraError(f"{where} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise MetaloraError(f"{where} cannot be read: {exc.strerror or exc}") from None
    data = parse_config_text(text, path)
    if data is None:
        return ConfigFile({})
    if not isinstance(data, dict):
        raise MetaloraError(f"{where} must hold a mapping of settings")
    per_learner: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for key, value in data.items():
        if key == PLUGIN_TABLES_KEY and isinstance(value, Mapping):
            for owner, table in value.items():  # a run's config.json: priors, suite, loggers
                if not isinstance(table, Mapping):
                    raise MetaloraError(f"{where}: {key}.{owner} must be a table of settings")
                if owner in learners:
                    per_learner.setdefault(owner, {}).update(_flatten(table))
                else:
                    shared.update(_flatten(table))
        elif key == LEARNER_TABLES_KEY and isinstance(value, Mapping):
            for learner, table in value.items():
                if learners and learner not in learners:
                    raise MetaloraError(f"{where}: unknown learner {learner!r} "
                                        f"in {key}; valid choices: {', '.join(learners)}")
                if not isinstance(table, Mapping):
                    raise MetaloraError(f"{where}: {key}.{learner} must be a table of settings")
                per_learner.setdefault(learner, {}).update(_flatten(table))
        elif key in learners and isinstance(value, Mapping):
            per_learner.setdefault(key, {}).update(_flatten(value))
        elif isinstance(value, Mapping) and sections is not None and key not in sections:
            valid = sorted({*learners, *sections, LEARNER_TABLES_KEY})
            raise MetaloraError(f"{where}: unknown table [{key}]; valid tables: "
                                f"{', '.join(valid)}")
        else:
            shared.update(_flatten({key: value}))
    return ConfigFile(shared, per_learner)


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``[section]`` tables (e.g. ``[abmll]``) by merging them into the flat namespace."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value))
        else:
            flat[key.replace("-", "_")] = value
    return flat


def resolve_config(infos: Mapping[str, SettingInfo],
                   file_values: ConfigFile | Mapping[str, Any],
                   cli_values: Mapping[str, Any]) -> ResolvedConfig:
    """Validate and merge: command-line values override the file's (learner tables too)."""
    if not isinstance(file_values, ConfigFile):
        file_values = ConfigFile(dict(file_values))
    values: dict[str, Any] = {}
    for source in (file_values.shared, cli_values):
        for key, value in source.items():
            if value is None:
                continue
            info = infos.get(key)
            if info is None:
                raise MetaloraError(
                    f"unknown setting {key!r}; valid settings: {', '.join(sorted(infos))}"
                )
            values[key] = coerce(info, value)
    learner_values: dict[str, dict[str, Any]] = {}
    for learner, table in file_values.per_learner.items():
        own = sorted(name for name, info in infos.items() if learner in info.owners)
        for key, value in table.items():
            if key not in own:
                raise MetaloraError(f"{key!r} in the config file's {learner!r} table is not a "
                                    f"setting of {learner}; its settings: "
                                    f"{', '.join(own) or '(none)'}")
            if value is None or cli_values.get(key) is not None:
                continue  # the command line overrides the file
            learner_values.setdefault(learner, {})[key] = coerce(infos[key], value)
    return ResolvedConfig(values=values, infos=dict(infos), learner_values=learner_values)


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a plain mapping."""
    return asdict(settings)
