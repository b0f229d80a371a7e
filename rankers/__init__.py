"""Built-in rankers. Each registers through the `rowrank.rankers` entry-point group (pyproject)."""
