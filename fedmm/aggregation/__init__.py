"""Aggregation math on plain arrays and tensors: no Flower, no messages."""
