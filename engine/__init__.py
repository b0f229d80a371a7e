"""rowrank: a homepage row ranking engine.

Rankers propose rows; a LightGBM page model orders them.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.pipeline import Engine

__version__ = "0.1.0"


def load(model_dir: str | PathLike[str]) -> Engine:
    """Load a model directory written by `rowrank train`; then `.page(user_id, device=, at=)`."""
    from engine.pipeline import load as _load

    return _load(Path(model_dir))
