"""batml: bat echolocation call detection and multi-label species classification at archive scale.

The import name is ``pipeline``; the console command is ``batml``.
"""

from pipeline._version import __version__

__all__ = ["__version__"]
