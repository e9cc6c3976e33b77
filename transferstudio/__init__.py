"""TransferStudio: transfer-learning experiments between deep networks, with plugins.

Importing this package is cheap: torch is imported only where models are built or trained.
"""

__version__ = "0.1.0"
