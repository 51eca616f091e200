-- Runs once, when the postgres service creates its data volume: the Optuna database
-- beside MLflow's (POSTGRES_DB).
CREATE DATABASE optuna;
