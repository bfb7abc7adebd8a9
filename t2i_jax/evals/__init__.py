"""Evaluation of trained runs beyond the training loss.

* ``shapes``: caption-satisfaction scoring and the shapes evaluator (reads images back with
  the ``scene_reader``);
* ``flickr8k``: the Flickr8k evaluator (R-precision, FD and KID in the ``dual_encoder``'s
  spaces);
* ``aux_net``: what the two auxiliary networks share: one training loop, padded batched
  inference and the parameter cache.

``t2i_jax.evaluate`` runs an evaluator over a run's model and its baselines.
"""
