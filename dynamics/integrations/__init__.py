"""Trainer integrations and exports, each in its own module and each loaded only when imported by name.

- ``dynamics.integrations.lightning``: ``DynamicsCallback`` for ``lightning.pytorch``
  (``pip install 'dynamics[lightning]'``); ``dynamics.integrations.pytorch_lightning``: the same callback for
  the older ``pytorch_lightning`` package.
- ``dynamics.integrations.huggingface``: ``DynamicsCallback`` for the ``transformers`` Trainer
  (``'dynamics[huggingface]'``).
- ``dynamics.integrations.tensorboard``: ``export_tensorboard``, runs as TensorBoard scalars
  (``'dynamics[tensorboard]'``).

``import dynamics`` imports none of them, so none of the trainers or TensorBoard is needed to record or analyse.
"""
