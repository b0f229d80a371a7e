"""Serving pages: the HTTP service, impression logging, batch precompute and worker processes.

The HTTP service by role: `http` (the app and its routes), `params` (requests parsed at the
edge), `service` (a page with its fallback), `model_holder` (the live model and hot swap),
`metrics`, `preview`, `edge` (the outermost ASGI layer), `static_files`, `api_errors`, and
`runner` (`rowrank serve` and its worker processes). Beside it: `impression_log`, `precompute`,
and `processes` (the frozen model loader shared by serve and precompute).
"""
