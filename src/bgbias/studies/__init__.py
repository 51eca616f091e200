"""Studies built from trainings: tuning (Optuna), the bias curve, the paper grid."""
