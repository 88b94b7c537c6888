"""Setting a run up: its settings, suite, model, metrics and learners.

:class:`RunSetup` is what ``metalora run`` (:class:`~metalora.runs.engine.Engine`
extends it with the training loop), ``eval``, ``prune`` and ``export`` share:
it checks the plugin names and settings before anything is loaded, loads the
suite and the model once, and builds seeded learners. :func:`open_run` reopens
a finished run directory with its recorded settings, and
:func:`load_tested_learner` rebuilds one of its learners with the adapters
its test used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from rich.console import Console

from metalora.activity import doing
from metalora.adapter_config import AdapterConfig
from metalora.calibration import CalibratedLearner, build_calibrator
from metalora.config import (
    ResolvedConfig,
    RunSettings,
    all_setting_infos,
    apply_recommended,
    setting_conflicts,
    settings_dict,
)
from metalora.devices import resolve_device
from metalora.distributed import Distributed, world_size_from_environment
from metalora.episodes import Episode, EpisodeSampler
from metalora.errors import MetaloraError
from metalora.interfaces import DataOptions, Learner, LearnerContext, Logger, Metric, Prior
from metalora.interfaces.calibrator import Calibrator
from metalora.interfaces.contract import ProtocolSpec
from metalora.models import LoadedModel, load_model
from metalora.models.checkpointing import enable_gradient_checkpointing
from metalora.plugins import PluginManager
from metalora.precision import TORCH_DTYPES, allow_tf32, autocast
from metalora.prompts import PromptEncoder
from metalora.records import Suite
from metalora.runs.rundir import (
    ADAPTERS_FILE,
    CONFIG_FILE,
    claim_named_run_dir,
    load_adapters,
    new_stamped_dir,
    read_config,
    require_finished,
    seed_dir,
    time_stamp,
)
from metalora.seeding import seed_everything
from metalora.settings import build_settings
from metalora.spec import RunSpec
from metalora.target_modules import find_target_linears

DTYPES = TORCH_DTYPES

RUN_OVERRIDES: tuple[str, ...] = ("learner", "seeds", "device")
"""Settings that may be given together with a run directory (learner/seed filters, device)."""


def with_absolute_task_path(run: RunSettings, plugins: PluginManager) -> RunSettings:
    """``run`` with ``tasks`` made absolute when it is the path of a task folder or suite
    file (not a registered suite), so that the run can be resumed from anywhere."""
    path = plugins.suite_path(run.tasks)
    return run if path is None else dataclasses.replace(run, tasks=str(path))


class RunSetup:
    """A run's settings and what they name: suite, model, metrics, learners. See the module."""

    def __init__(self, config: ResolvedConfig | RunSpec, plugins: PluginManager,
                 console: Console | None = None, given: ResolvedConfig | None = None) -> None:
        self.plugins = plugins
        self.console = console or Console(stderr=True)
        self.resume_dir: Path | None = None
        """Set by :meth:`from_run_dir`: the run directory the settings were read from."""
        self._noted: set[str] = set()
        self.distributed = Distributed()
        """This process's rank (a single process unless joined to a torchrun group)."""
        if isinstance(config, RunSpec):  # built and checked already
            self.given = config.given
            self.config = config.config.copy()
            self.run: RunSettings = config.run
            self.recommended = list(config.recommended)
        else:
            self.given = given if given is not None else config.copy()
            """The values given, as given (recorded in config.json); a reopened run's, its own."""
            config = config.copy()  # the suite's recommendations go into this run's copy only
            self.config = config
            try:
                suite = plugins.suite(config.run.tasks)
            except MetaloraError:
                suite = None  # said by _validate_names, after the learner names
            self.recommended = apply_recommended(config, getattr(suite, "recommended", {})
                                                 or {}, plugins.registry("learner").names())
            """The suite's recommended settings that were used (none was given for them)."""
            self.run = with_absolute_task_path(config.run, plugins)
            self._validate_names()
            self.validate_settings()
        self._suite: Suite | None = None
        self._loaded: LoadedModel | None = None
        self._episodes: EpisodeSampler | None = None

    @classmethod
    def from_run_dir(cls, run_dir: Path | str, plugins: PluginManager,
                     console: Console | None = None, **kwargs: Any) -> Self:
        """Set up with the recorded settings of the run in ``run_dir`` (to continue it, or to
        reopen it: ``kwargs`` go to the constructor)."""
        run_dir = Path(run_dir)
        recorded = read_config(run_dir)
        run_fields = {f.name for f in dataclasses.fields(RunSettings)}
        given = ResolvedConfig(dict(recorded.get("given") or {}), all_setting_infos(plugins))
        values = {**given.values, **{k: v for k, v in recorded.items() if k in run_fields}}
        config = ResolvedConfig(values=values, infos=given.infos,
                                learner_values=dict(recorded.get("learner_settings") or {}))
        try:
            setup = cls(config, plugins, console=console, given=given, **kwargs)
        except MetaloraError as exc:
            raise MetaloraError(f"{str(run_dir / CONFIG_FILE)!r}: {exc}") from None
        setup.resume_dir = run_dir
        return setup

    def change_run(self, **changes: Any) -> None:
        """Replace run settings (a learner/seed subset, another suite or device) before
        anything is loaded."""
        if "device" in changes:
            resolve_device(changes["device"])
        self.run = with_absolute_task_path(dataclasses.replace(self.run, **changes),
                                           self.plugins)

    def _validate_names(self) -> None:
        """Fail fast, before loading anything, on unknown plugin names and bad settings."""
        if not self.run.learner:
            raise MetaloraError("no learner given; valid choices: "
                                + ", ".join(self.plugins.registry("learner").names()))
        learners = self.plugins.registry("learner")
        for name in self.run.learner:
            cls = learners.get(name)
            if self.run.gradient_checkpointing and not cls.supports_gradient_checkpointing:
                able = [n for n in learners.names()
                        if learners.get(n).supports_gradient_checkpointing]
                raise MetaloraError(
                    f"learner {name!r} cannot train with --gradient-checkpointing; run it "
                    "without, or use a learner that can: " + ", ".join(able))
        if len(set(self.run.learner)) != len(self.run.learner):
            raise MetaloraError(f"learner given twice in {','.join(self.run.learner)!r}")
        self.plugins.suite(self.run.tasks)
        clashes = setting_conflicts(self.plugins)
        for name in (*self.run.learner, self.run.tasks):
            if name in clashes:
                raise MetaloraError(f"{name!r} cannot run: {clashes[name]}")
        for name in self.run.metrics:
            self.plugins.registry("metric").get(name)
        self.make_calibrator()
        self.logger_classes()
        self.plugins.registry("metric").get(self.run.select_metric)
        if self.run.data_dir is not None and not Path(self.run.data_dir).is_dir():
            raise MetaloraError(f"data directory {self.run.data_dir!r} does not exist")
        if not self.run.model.strip():
            raise MetaloraError("no model given (--model ''); give a Hugging Face id, a local "
                                "path, or an alias: tiny, smollm2-135m")
        if not self.run.target_modules:
            raise MetaloraError("no target module given (--target-modules ''); give e.g. "
                                "q_proj,v_proj,o_proj")
        resolve_device(self.run.device)
        if world_size_from_environment() > 1 and re.match(r"^cuda:\d+$", self.run.device):
            raise MetaloraError(
                f"--device {self.run.device} under torchrun would put every rank on one GPU; "
                "give --device cuda (each rank takes cuda:LOCAL_RANK) and choose the GPUs "
                "with CUDA_VISIBLE_DEVICES")
        if not self.run.seeds:
            raise MetaloraError("no seed given; pass e.g. --seeds 0 or --seeds 0,1,2")
        if len(set(self.run.seeds)) != len(self.run.seeds):
            raise MetaloraError(f"seed given twice in {self.run.seeds}")
        if self.run.epochs < 0:
            raise MetaloraError(f"epochs must be 0 or more, got {self.run.epochs}")
        if self.run.eval_every < 0:
            raise MetaloraError(
                f"eval_every must be 0 (never) or a number of epochs, got {self.run.eval_every}")

    def validate_settings(self) -> None:
        """Build, and so check, every setting of every selected learner, of every prior (a
        learner may choose any) and of the suite, before anything is loaded: a bad value
        for the second learner stops the run before the first one trains."""
        for name in self.run.learner:
            self.learner_settings(name)
        for reg in self.plugins.registry("prior"):
            build_settings(reg.implementation.Settings, self.config.values, owner=reg.name)
        suite_settings = getattr(self.plugins.suite(self.run.tasks),
                                 "Settings", None)
        if suite_settings is not None:
            build_settings(suite_settings, self.config.values, owner=self.run.tasks)
        self.metrics()

    def logger_classes(self, note: bool = False) -> list[type[Logger]]:
        """The loggers this run writes to: ``logger`` (its default less ``tensorboard`` with
        ``--no-tensorboard``). An unknown name is one error line, and so is a logger whose
        package is missing, except a default one (``tensorboard``): it is left out, with
        one note (with ``note``, when the loggers are made) if it was asked for
        (``--tensorboard``, ``--logger``)."""
        given = self.given.values
        defaults = RunSettings().logger
        registry = self.plugins.registry("logger")
        classes = []
        for name in self.run.logger:
            if "logger" not in given and (name not in registry or (
                    name == "tensorboard" and not self.run.tensorboard)):
                continue  # a default logger left out, or not loaded (METALORA_PLUGINS)
            cls = registry.get(name)
            reason = cls.missing()
            if reason is None:
                classes.append(cls)
            elif name not in defaults:
                raise MetaloraError(f"logger {name!r} {reason}")
            elif note and ("logger" in given or given.get(name)) and name not in self._noted:
                self._noted.add(name)
                self.note(f"logger {name!r} skipped: it {reason}")
        return classes

    def make_loggers(self, run_dir: Path, learner: str, seed: int,
                     resume_step: int | None) -> list[Logger]:
        """One logger of each of :meth:`logger_classes` for this learner and seed (none on a
        torchrun rank other than 0: its records would repeat rank 0's)."""
        if not self.distributed.is_main:
            return []
        return [cls(run_dir, learner, seed, build_settings(cls.Settings, self.config.values,
                                                           owner=cls.name), resume_step)
                for cls in self.logger_classes(note=True)]

    def metrics(self) -> dict[str, Metric]:
        """The metrics to report (``metrics``, or every registered one), with settings."""
        names = self.run.metrics or sorted(  # the selection metric first, then by name
            self.plugins.registry("metric").names(), key=lambda n: (n != self.run.select_metric, n))
        return {name: self.make_metric(name) for name in names}

    def make_metric(self, name: str) -> Metric:
        """A registered metric with its settings resolved from this run's config."""
        cls = self.plugins.registry("metric").get(name)
        return cls(build_settings(cls.Settings, self.config.values, owner=name))

    @property
    def suite(self) -> Suite:
        """The suite named by ``tasks`` (loaded on first use)."""
        return self.load_suite()

    @property
    def loaded(self) -> LoadedModel:
        """The model named by ``model`` (loaded on first use)."""
        return self.load_model()

    @property
    def episodes(self) -> EpisodeSampler:
        """The batch machinery of the loaded model (which it loads on first use)."""
        self.load_model()
        assert self._episodes is not None
        return self._episodes

    def load_suite(self) -> Suite:
        """Load (once) the suite named by ``tasks``."""
        if self._suite is None:
            sampler = self.plugins.suite(self.run.tasks)
            data_dir = Path(self.run.data_dir) if self.run.data_dir else None
            settings_cls = getattr(sampler, "Settings", None)
            settings = (build_settings(settings_cls, self.config.values, owner=self.run.tasks)
                        if settings_cls is not None else None)
            with doing(f"loading suite {self.run.tasks!r}"):
                suite = sampler.load(DataOptions(
                    data_dir=data_dir, seed=0, skip_bad_records=self.run.skip_bad_records,
                    settings=settings))
            if self.run.max_train_tasks is not None:
                suite.train = suite.train[: self.run.max_train_tasks]
            if self.run.max_eval_tasks is not None:
                suite.test = suite.test[: self.run.max_eval_tasks]
                suite.validation = suite.validation[: self.run.max_eval_tasks]
            self._suite = suite
        return self._suite

    def load_test_episodes(self) -> tuple[Suite, dict[str, Metric], list[Episode]]:
        """Load the suite and the model; the suite, the metrics and its test episodes.

        A suite without test tasks is one error line.
        """
        suite = self.load_suite()
        if not suite.test:
            raise MetaloraError(f"suite '{suite.name}' has no test tasks")
        return suite, self.metrics(), [self.episodes.episode(t) for t in suite.test]

    def load_model(self) -> LoadedModel:
        """Load (once) the model named by ``model`` and build the batch machinery."""
        if self._loaded is None:
            device = self.device()
            with doing(f"loading model {self.run.model!r}"):
                loaded = load_model(self.run.model, dtype=DTYPES[self.run.dtype],
                                    device=device, notify=self.note)
            allow_tf32(device, self.run.tf32)
            # the adapted layers exist: checked here, before any run directory is made
            find_target_linears(loaded.model, self.run.target_modules)
            if self.run.gradient_checkpointing:
                enable_gradient_checkpointing(loaded.model, f"model {self.run.model!r}")
            encoder = PromptEncoder(loaded.tokenizer, max_length=self.run.max_length)
            self._episodes = EpisodeSampler(
                encoder, batch_size=self.run.batch_size, support_batches=self.run.support_batches,
                query_cap=self.run.query_cap, eval_batch_size=self.run.eval_batch_size,
                seed=0, device=device, in_context=self.run.in_context)
            self._loaded = loaded
        return self._loaded

    def unload_model(self) -> None:
        """Forget the loaded model (the next use loads a fresh one)."""
        self._loaded = self._episodes = None

    def note(self, text: str) -> None:
        """Tell the person running this something, on the engine's console (one plain line)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def precision(self) -> contextlib.AbstractContextManager[None]:
        """The context for forward passes: ``torch.autocast`` as the ``autocast`` setting says."""
        return autocast(self.device(), self.run.autocast)

    def device(self) -> str:
        """The resolved ``device`` setting; under torchrun on GPUs, this rank's GPU
        (``cuda:LOCAL_RANK``)."""
        device = resolve_device(self.run.device)
        if self.distributed.active and device == "cuda":
            return f"cuda:{self.distributed.local_rank}"
        return device

    def learner_settings(self, name: str) -> Any:
        """A learner's settings: its defaults overridden by the given (or recorded) values."""
        cls = self.plugins.registry("learner").get(name)
        values = {**self.config.values, **self.config.learner_values.get(name, {})}
        return build_settings(cls.Settings, values, owner=name)

    def make_prior(self, name: str) -> Prior:
        """A registered prior with its settings resolved from this run's config."""
        cls = self.plugins.registry("prior").get(name)
        return cls(build_settings(cls.Settings, self.config.values, owner=name))

    def build_learner(self, name: str, seed: int) -> Learner:
        """Seed everything and instantiate a learner (it attaches its adapters)."""
        loaded = self.load_model()
        rng = seed_everything(seed)
        cls = self.plugins.registry("learner").get(name)
        context = LearnerContext(
            model=loaded.model, batches=self.episodes, protocol=self.spec_protocol(),
            adapter=AdapterConfig(rank=self.run.rank, alpha=self.run.alpha,
                                  target_modules=tuple(self.run.target_modules)),
            settings=self.learner_settings(name), rng=rng, train_loss=self.run.train_loss,
            make_prior=self.make_prior, ranks=self.distributed, seed=seed,
            legacy_run=self.run)
        learner = cls(context)
        calibrator = self.make_calibrator()
        return learner if calibrator is None else CalibratedLearner(learner, calibrator)

    def make_calibrator(self) -> Calibrator | None:
        """The ``calibrate`` calibrator with its settings, or None for ``none``."""
        return build_calibrator(self.plugins, self.run.calibrate, self.config.values)

    def spec_protocol(self) -> ProtocolSpec:
        """The evaluation protocol's settings, typed (what a learner is handed)."""
        return self.spec.protocol

    @property
    def spec(self) -> RunSpec:
        """This run's settings as one checked, frozen specification."""
        return RunSpec(given=self.given, config=self.config.copy(), run=self.run,
                       settings=self.plugin_settings(), recommended=tuple(self.recommended))

    def plugin_settings(self) -> dict[str, Any]:
        """Each selected plugin's settings, by owner: the learners, every prior (a learner
        may choose any), the suite (if it has settings) and the loggers."""
        out: dict[str, Any] = {name: self.learner_settings(name) for name in self.run.learner}
        for reg in self.plugins.registry("prior"):
            out[reg.name] = build_settings(reg.implementation.Settings, self.config.values,
                                           owner=reg.name)
        suite_settings = getattr(self.plugins.suite(self.run.tasks), "Settings", None)
        if suite_settings is not None:
            out[self.run.tasks] = build_settings(suite_settings, self.config.values,
                                                 owner=self.run.tasks)
        for cls in self.logger_classes():
            out[cls.name] = build_settings(cls.Settings, self.config.values, owner=cls.name)
        calibrator = self.make_calibrator()
        owned = [(name, metric.settings) for name, metric in self.metrics().items()]
        if calibrator is not None:
            owned.append((calibrator.name, calibrator.settings))
        out.update({name: s for name, s in owned
                    if dataclasses.is_dataclass(s) and dataclasses.fields(s)})
        return out

    def resolved_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this run: core settings, each learner's settings,
        and the values given explicitly (``given``, which also carries prior settings; a
        suite's recommendations are not in it, they are in the settings they set)."""
        others = {owner: settings_dict(settings)
                  for owner, settings in self.plugin_settings().items()
                  if owner not in self.run.learner and dataclasses.is_dataclass(settings)}
        return {
            **settings_dict(self.run),
            "learner_settings": {n: settings_dict(self.learner_settings(n))
                                 for n in self.run.learner},
            "plugin_settings": others,
            "given": dict(self.given.values),
        }

    def make_run_dir(self) -> Path:
        """Create a fresh run directory (never reusing an existing one)."""
        if self.run.run_name:  # a name given is that name, or an error; never another one
            return claim_named_run_dir(Path(self.run.output_dir) / self.run.run_name)
        stem = (f"{time_stamp()}-{self.plugins.suite(self.run.tasks).name}-"
                f"{'+'.join(self.run.learner)}")
        return new_stamped_dir(Path(self.run.output_dir), stem)


def open_run(run_dir: Path | str, plugins: PluginManager, console: Console | None = None,
             overrides: Mapping[str, Any] | None = None) -> RunSetup:
    """The set-up of a finished run directory, with learner/seed filters and device applied:
    the one way eval, prune, adapt and export reopen a run.

    Raises one clear :class:`MetaloraError` when the directory does not exist,
    is not a run directory, or a selected learner/seed has not finished.
    """
    return select_from_run(RunSetup.from_run_dir(run_dir, plugins, console=console), run_dir,
                           overrides)


def select_from_run(setup: RunSetup, run_dir: Path | str,
                    overrides: Mapping[str, Any] | None = None) -> RunSetup:
    """:func:`open_run` on a set-up already read from ``run_dir`` (a caller that needs the
    recorded learners and seeds to choose its defaults reads the run once)."""
    run_dir = Path(run_dir)
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(RUN_OVERRIDES))
    if bad:
        raise MetaloraError(
            f"--{bad[0].replace('_', '-')} cannot be changed for a saved run (its recorded "
            f"settings are used); with RUN_DIR only --{', --'.join(RUN_OVERRIDES)} may be given")
    run = setup.run
    changes: dict[str, Any] = {}
    for key, recorded in (("learner", run.learner), ("seeds", run.seeds)):
        chosen = overrides.get(key)
        if chosen is None:
            continue
        for value in chosen:
            if value not in recorded:
                what = "learner" if key == "learner" else "seed"
                raise MetaloraError(
                    f"{what} {value!r} is not in run {str(run_dir)!r}; valid choices: "
                    + ", ".join(str(v) for v in recorded))
        changes[key] = [v for v in recorded if v in chosen]
    if overrides.get("device") is not None:
        changes["device"] = overrides["device"]
    if changes:
        setup.change_run(**changes)
    for name in setup.run.learner:
        for seed in setup.run.seeds:
            require_finished(run_dir, name, seed)
    return setup


def load_tested_learner(setup: RunSetup, run_dir: Path, name: str, seed: int) -> Learner:
    """Build a learner of a finished run and load the adapters its test used.

    The caller must call ``learner.adapters.remove()`` when done.
    """
    learner = setup.build_learner(name, seed)
    path = seed_dir(run_dir, name, seed) / ADAPTERS_FILE
    try:
        saved = load_adapters(path)
        expected = dict(learner.adapters.named_parameters())
        if set(saved) != set(expected):
            odd = sorted(set(saved) ^ set(expected))[0]
            raise MetaloraError(f"adapter file {str(path)!r} does not match learner "
                                f"{name!r} with the run's settings (tensor {odd!r})")
        for key, tensor in saved.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise MetaloraError(
                    f"adapter file {str(path)!r} does not match learner {name!r} with the "
                    f"run's settings: tensor {key!r} has shape {tuple(tensor.shape)}, the "
                    f"learner's {tuple(expected[key].shape)}")
        learner.adapters.restore(saved)
    except BaseException:
        learner.adapters.remove()
        raise
    return learner


def check_tested_adapters(setup: RunSetup, run_dir: Path) -> None:
    """Load every selected learner's tested adapters once, so that a missing or mismatched
    file is one error line before any evaluation starts."""
    for name in setup.run.learner:
        for seed in setup.run.seeds:
            load_tested_learner(setup, run_dir, name, seed).adapters.remove()
