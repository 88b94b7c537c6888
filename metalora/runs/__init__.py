"""Runs: what happens above the components, and what a run leaves on disk.

* :mod:`~metalora.runs.setup`: a run's settings, suite, model and learners (shared by
  every command);
* :mod:`~metalora.runs.engine`: the training loop of ``metalora run``;
* :mod:`~metalora.runs.results`, :mod:`~metalora.runs.reporting`,
  :mod:`~metalora.runs.plots`: results, tables and figures;
* :mod:`~metalora.runs.state`, :mod:`~metalora.runs.checkpoint`,
  :mod:`~metalora.runs.rundir`: the run directory, interruption and resume;
* :mod:`~metalora.runs.logging_sinks`, :mod:`~metalora.runs.progress`: what a
  person follows while it runs;
* :mod:`~metalora.runs.evaluate_run`, :mod:`~metalora.runs.prune`,
  :mod:`~metalora.runs.export`: ``eval``, ``prune`` and ``export`` of a finished run.
"""
