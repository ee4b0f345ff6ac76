"""Evaluation of pre-trained encoders."""

from bam_jax.evaluate.knn import knn_predict, run_knn_eval

__all__ = ["knn_predict", "run_knn_eval"]
