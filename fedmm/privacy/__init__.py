"""Differential privacy: sample-level DP-SGD accounting and plans, client-level DP wrappers and accounting."""
