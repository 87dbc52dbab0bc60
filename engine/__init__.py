"""Godwit engine: the appliance daemon, its agents and the mobility service. Never imports Qt."""

from __future__ import annotations

__version__ = "0.1.0"

from engine.config import DataDir, EngineConfig, default_data_dir
from engine.errors import EngineError

__all__ = ["DataDir", "EngineConfig", "EngineError", "__version__", "default_data_dir"]
