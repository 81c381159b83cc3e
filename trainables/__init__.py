"""What runs inside a trial: data, model, training loop and checkpoints. Imports nothing
from ``search`` or ``cluster`` (tests/test_layers.py).

- ``spec``: everything one trial needs; ``params``: the searched parameters, declared
  once; ``metrics``: the names of what a trial reports each epoch.
- ``data``, ``splits``, ``staged``: data sources and their train/validation/test splits;
  ``augment``: the tf.data pipeline and the recipe's augmentations; ``tta``: test-time views.
- ``backbones``: the backbone registry (EfficientNet B0-B7, EfficientNet-Lite0-2, and
  families a user registers); ``model``: the classifier around a backbone;
  ``weights``, ``torch_legacy``, ``cache``: pretrained weights without a network.
- ``train``: the recipe's two phases, one report per epoch; ``schedule`` and
  ``schedule_graph``: the learning-rate rule; ``divergence``: when training diverged;
  ``strategy``: the tf.distribute strategy and precision; ``memory``: memory per replica;
  ``preemption``: checks for a Spot reclaim inside an epoch.
- ``checkpoint``: per-epoch checkpoints; ``reporting``: how an epoch is handed on;
  ``stopping``: a stopped trial's training ends before its process does;
  ``evaluate``: a checkpoint's accuracy; ``storage``: local or ``gs://`` through pyarrow;
  ``errors``: the one exception hierarchy, each error with its exit code.
"""

import os

# Keras 3 takes its backend from KERAS_BACKEND, else from ~/.keras/keras.json. The trials
# and tools here are TensorFlow programs (tf.data, tf.distribute, tf.function), so a
# user's own Keras default (a keras.json that says "jax" or "torch") must not reach
# them: set before any module of this package imports Keras.
os.environ["KERAS_BACKEND"] = "tensorflow"
