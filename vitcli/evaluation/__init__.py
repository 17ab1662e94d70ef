"""Evaluation: logits over a data set, the metrics (top-k, per class, confusion) and their plots."""
