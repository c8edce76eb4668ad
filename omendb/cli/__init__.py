"""The ``omendb`` command line: ingest, search, info, compact, salvage, export, demo, serve.

``main`` defines the commands, ``output`` reads queries and formats what they print,
``demo`` is the tour ``omendb demo`` runs.
"""

from .main import main

__all__ = ["main"]
