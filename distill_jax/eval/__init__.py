"""Evaluation of distilled sets: accuracy, replay and retrain, step budgets."""
