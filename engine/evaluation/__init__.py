"""Evaluation: temporal splits, page and row metrics, variant benchmarks and their reports."""
