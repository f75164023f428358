"""Training, policy fitting, evaluation and batch scoring for cascade routing."""
