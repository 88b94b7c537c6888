"""A run's specification: every setting, built and checked once, then never changed.

:class:`RunSpec` is what a run is made from (``metalora run``, or
:func:`metalora.api.train` in Python). It is built by
:func:`metalora.api.run_spec` (or :meth:`metalora.runs.setup.RunSetup.spec`)
from the given values, a config file and the selected suite's recommended
settings, after every check: plugin names, each selected plugin's settings
field by field and as a whole (a settings class's ``check()``), devices and
paths. So a bad value for the second learner is one error line before the
first one trains, and nothing downstream mutates it.

The core settings are grouped by concern, each group a frozen dataclass:
:attr:`RunSpec.data`, :attr:`RunSpec.training`, :attr:`RunSpec.protocol` (the
evaluation protocol every learner shares), :attr:`RunSpec.adapter`,
:attr:`RunSpec.system` (device and precision) and :attr:`RunSpec.output`.
Plugin settings are kept per owner (:attr:`RunSpec.settings`, e.g.
``spec.settings["abmll"].beta``); on the command line and in flat config
files their names stay as they are (``--beta``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from metalora.adapter_config import AdapterConfig
from metalora.interfaces.contract import ProtocolSpec

if TYPE_CHECKING:
    from metalora.config import ResolvedConfig, RunSettings


@dataclass(frozen=True)
class DataSpec:
    """Which tasks, from where."""

    tasks: str
    data_dir: str | None
    max_train_tasks: int | None
    max_eval_tasks: int | None
    skip_bad_records: bool


@dataclass(frozen=True)
class TrainingSpec:
    """What trains, for how long, on what batches, and how the tested epoch is chosen."""

    learner: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    eval_every: int
    select_metric: str
    batch_size: int
    train_loss: str
    max_length: int


@dataclass(frozen=True)
class SystemSpec:
    """The model, and where and in what precision it runs."""

    model: str
    device: str
    dtype: str
    autocast: str
    tf32: bool
    gradient_checkpointing: bool


@dataclass(frozen=True)
class OutputSpec:
    """Where the run directory goes and what it holds besides the results."""

    output_dir: str
    run_name: str | None
    logger: tuple[str, ...]
    tensorboard: bool
    plots: bool


GROUPS: dict[str, type] = {"data": DataSpec, "training": TrainingSpec,
                           "protocol": ProtocolSpec, "adapter": AdapterConfig,
                           "system": SystemSpec, "output": OutputSpec}
"""Each group of core settings and its dataclass (every core setting is in exactly one)."""


G = TypeVar("G")


def _group(cls: type[G], run: RunSettings) -> G:
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(run, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


@dataclass(frozen=True)
class RunSpec:
    """Every setting of one run, checked (see the module). Build it with
    :func:`metalora.api.run_spec`; do not construct it by hand."""

    given: ResolvedConfig
    """The values given (config file and arguments), as given."""
    config: ResolvedConfig
    """The values the run uses: the given ones plus the suite's recommendations."""
    run: RunSettings
    """The core settings, flat (as the command line names them)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Each selected plugin's settings instance, by owner: the learners, every prior (a
    learner may choose any), the suite and the loggers."""
    recommended: tuple[str, ...] = ()
    """The suite's recommended settings that were used (``name=value``)."""

    @property
    def data(self) -> DataSpec:
        return _group(DataSpec, self.run)

    @property
    def training(self) -> TrainingSpec:
        return _group(TrainingSpec, self.run)

    @property
    def protocol(self) -> ProtocolSpec:
        return _group(ProtocolSpec, self.run)

    @property
    def adapter(self) -> AdapterConfig:
        return AdapterConfig(rank=self.run.rank, alpha=self.run.alpha,
                             target_modules=tuple(self.run.target_modules))

    @property
    def system(self) -> SystemSpec:
        return _group(SystemSpec, self.run)

    @property
    def output(self) -> OutputSpec:
        return _group(OutputSpec, self.run)

    def to_dict(self) -> dict[str, Any]:
        """The groups and each owner's settings, as plain JSON-ready mappings."""
        groups = {name: dataclasses.asdict(getattr(self, name)) for name in GROUPS}
        owners = {owner: dataclasses.asdict(s) for owner, s in self.settings.items()
                  if dataclasses.is_dataclass(s) and not isinstance(s, type)}
        return {**groups, "plugins": owners, "recommended": list(self.recommended)}
