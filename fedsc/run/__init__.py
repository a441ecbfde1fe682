"""The run pipeline: one ``RunConfig`` -> corrected cells, tidy rows, ``run.json``.

Stages, each a module that the layers above plug into without importing the runner back:

- config: :mod:`fedsc.run.config` (``RunConfig``; every choice checked before data load);
- load: :mod:`fedsc.run.load` (the one dataset catalogue) and the input checks;
- prepare: :mod:`fedsc.run.prepare` (``INPUT_PREPARATION`` by input kind, ``run_inputs``);
- execute: :mod:`fedsc.run.execute` (``execute_run``; how the method runs is chosen in
  ``EXECUTORS``: in process, or as a Flower deployment from :mod:`fedsc.deploy.experiment`);
- evaluate: :mod:`fedsc.run.evaluate` (``evaluate_run``: panels, health, the privacy
  layer's ``annotate``);
- record: :mod:`fedsc.run.record` (``write_run``, atomic; ``check_output_dir``).

The stages hand each other the types of :mod:`fedsc.run.outcome` (``Prepared``,
``MethodOutcome``, ``RunResult``). Kept for compatibility: :mod:`fedsc.runner` re-exports
the names it held before the split and :mod:`fedsc.run_config` the run configuration's, so
``from fedsc.runner import execute_run`` and ``from fedsc.run_config import RunConfig``
keep working.
"""
