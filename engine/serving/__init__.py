"""Serving pages: the HTTP service, impression logging, batch precompute and worker processes."""
