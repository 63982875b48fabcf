"""A local stand-in for the Market's `PUT /v2/campaigns/{campaignId}/offers/stocks`."""

from sandbox.config import ConfigError, SandboxConfig
from sandbox.server import MarketSandbox, main

__all__ = ["ConfigError", "MarketSandbox", "SandboxConfig", "main"]
