"""The search: what the driver does, from a config file to a finished experiment.

- ``cli``, ``__main__``: the ``hpsearch`` command; parses arguments and calls the rest.
- ``experiment``: a search's lifecycle (checks, lease, new or resumed rounds, summary);
  ``layout``: every file and folder of an experiment's directory, declared once.
- ``config``: the YAML file as typed, validated dataclasses (``shape``: a trial's
  resources fields); ``rules``: the rules that span fields; ``resume_rules``: what a
  resume may change; ``schema``: its JSON Schema; ``space``: its searched parameters as
  Tune domains.
- ``strategies``: what each training strategy asks of the cluster and does; ``plan``,
  ``resources``, ``schedulable``: each backbone's trial shape and memory, and whether
  the cluster can ever hold it.
- ``connect``: which Ray the search runs on; ``lease``: one driver per experiment;
  ``signals``: SIGTERM and SIGINT as Tune's graceful stop.
- ``run``: the Tuner (TPE sampler, ASHA, the trial function); ``distributed`` and
  ``tf_config``: a trial as a Ray Train worker group; ``weights``: pretrained weights
  staged once before the first trial.
- ``study``: the Optuna study in ``study.db``; ``rounds``: a search as one or more Tune
  runs over it; ``best``: each trial's best checkpoint kept apart.
- ``results``: the trials table and history; ``ensemble``: the TTA ensemble;
  ``report``: the HTML report; ``stage``: ``hpsearch data stage``.
"""
