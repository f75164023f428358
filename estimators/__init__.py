"""Quality and cost estimators that feed the decision kernel."""
