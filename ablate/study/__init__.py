"""Study files: schema, loading, validation, includes, overrides, expansion into trials, and ``plan``.

A study is one YAML file that asks one question. Every key but ``name`` and ``question`` has a default::

    # Question: does depth help residual nets and hurt plain ones?   (a comment, for readers of the file)
    name: depth_sweep                 # the MLflow experiment
    question: Does depth ...?         # the same question, recorded with the results
    data: {name: cifar10}             # fixed DataConfig fields
    model: {block: basic}             # fixed ModelSpec fields
    trainer: {iterations: 64000}      # fixed TrainerConfig fields
    seeds: [0, 1]                     # replicates: every configuration runs once per seed
    search:
      method: grid                    # grid | tpe | random
      num_samples: null               # tpe/random: points to sample (each run once per seed)
      seed: 0                         # tpe/random: the sampler's seed
      max_trials: 40                  # budget: refuse to load a study that would start more trials
    space:                            # axes: dotted TrainConfig key -> values
      include: [depth.yaml]           # reusable axes from search_spaces/
      model.shortcut: [A, none]       # categorical: a list (grid, tpe, random)
      trainer.lr: {low: 0.01, high: 0.5, log: true}   # a range (tpe, random); integer for int fields
      trainer.warmup:                 # a section: each value is a dict merged into it
        - {policy: paper}
        - {policy: linear, ramp_iterations: 400}
    constraints:
      exclude:                        # drop a trial matching every key of an entry; a list: any of
        - {model.n: 200, model.shortcut: none}
      set:                            # per-value overrides, applied in order before excludes
        - when: {model.n: [18, 200]}
          then: {trainer.warmup.policy: paper}
    resources: {cpu: 1, gpu: 0.25}    # per trial; gpu 0: none, (0, 1]: a share, above 1: whole GPUs
    max_concurrent: 4                 # trials at once (null: as many as resources allow)
    metric: {name: test_error, mode: min}
    early_stopping: {grace_period: 4000, reduction_factor: 4}   # ASHA, in training iterations; omit: off
    fuse: 4                           # grid: up to 4 trials differing only in seed or optimiser recipe
                                      # train as one Ray trial (ablate.fused), each recorded as its own run

Includes are searched in the study's folder, then ``../search_spaces/`` beside it, then the project
root's ``search_spaces/``; a space file holds axes only (and may include others). The study's own
axes replace included ones of the same key. Overrides (``--set key.path=value``, value parsed as
YAML) are applied to the file as written, before includes: ``trainer.epochs=2``, ``seeds=[0,1]``,
``space.model.n=[3,5]``.

Example::

    >>> from ablate.study import format_plan, load_study, plan_rows
    >>> study = load_study("studies/quickstart.yaml", ["seeds=[0,1]"])
    >>> study.num_trials, study.trials()[0].label
    (8, 'plain8')
    >>> print(format_plan(plan_rows(study)))          # doctest: +SKIP
"""

from ablate.study.core import Axis, Study, Trial
from ablate.study.load import load_study
from ablate.study.plan import format_plan, plan_rows, train_iterations, training_images
from ablate.study.schema import StudyError

__all__ = [
    "Axis",
    "Study",
    "StudyError",
    "Trial",
    "format_plan",
    "load_study",
    "plan_rows",
    "train_iterations",
    "training_images",
]
