"""``python -m icg``: the same as the ``icg`` command."""

from icg.cli import main

main()
