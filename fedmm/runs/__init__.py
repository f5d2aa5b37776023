"""A run directory's writers: the recorder (config, metrics.jsonl, summary, heads), checkpoints, the plot."""
