"""MLflow: the tracker, the offline outbox, the model registry, lineage, the served model and services."""
