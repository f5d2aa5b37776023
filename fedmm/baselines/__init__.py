"""Reference runs without a federation: centralized (pooled data) and local (each hospital alone)."""
