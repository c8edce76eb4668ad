"""``python -m omendb.cli``: the ``omendb`` command."""

from .main import main

main()
