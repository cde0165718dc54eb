"""Orchestration on Ray Tune and Optuna: the only package that imports ray or optuna.

- `run`: `run_study`, a study's phases as Tune experiments over what its record lacks;
- `feeds`: what a phase runs next (planned trials, or per-loss Optuna ask/tell);
- `driver`: Tune's events into the record, MLflow and progress;
- `trainable`: the Tune trainable around `featloss.train.fit`;
- `progress`: the progress line; `ray_setup`: starting or joining Ray.

Import the submodules (``from featloss.engine.run import run_study``): importing this package
alone imports neither Ray nor Optuna.
"""
