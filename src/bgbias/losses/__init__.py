"""The five metric-learning losses: registry and tuned values."""
