"""alignloop: iterative preference alignment (offline DPO + targeted online rounds).

Importing this package stays light: it must not import torch. Heavy modules
(`alignloop.training`, `alignloop.models`) are imported where they are used.
"""

__version__ = "0.1.0"
