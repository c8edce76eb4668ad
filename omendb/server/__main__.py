"""``python -m omendb.server PATH ...``: the same as ``omendb serve``."""

from .command import serve_command

serve_command(prog_name="omendb serve")
