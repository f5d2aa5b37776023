"""Studies built from many runs: compare (strategies × scenarios), sweep and report, privacy sweep."""
