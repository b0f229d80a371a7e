"""Datasets: the column schema, validation, MovieLens import and the member History."""
