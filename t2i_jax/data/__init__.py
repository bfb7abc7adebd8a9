"""Datasets: readers, TFDS builders and the tf.data input pipeline."""
