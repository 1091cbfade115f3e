"""The ``icg`` command (and ``python -m icg``).

* ``icg fit|validate|test|predict``: a LightningCLI (:mod:`icg.cli.lightning_cli`) over :class:`icg.ICGModule` and
  the datamodules, with the shipped recipes (``--config market1501``, :mod:`icg.cli.recipes`).
* ``icg rank``, ``icg export``, ``icg index``, ``icg search``: one function each (:mod:`icg.cli.functions`).

Examples::

    icg fit --config market1501                      # a shipped recipe (icg/configs/market1501.yaml)
    icg fit --config market1501_bot                  # its BoT baseline
    icg test --config market1501 --ckpt_path runs/market1501/.../best.ckpt
    icg predict --config market1501 --ckpt_path best.ckpt --data.init_args.predict_dir my_images/
    icg rank --ckpt_path best.ckpt --query q/ --gallery g/ --output ranking.png
    icg export --ckpt_path best.ckpt --format onnx --output model.onnx   # or --format torchscript
    icg index --model model.onnx --folder gallery/ --output gallery.faiss
    icg search --index gallery.faiss --query q/ --top_k 10

This module imports only what the command needs: ``icg index`` and ``icg search`` on an exported file start without
Lightning and jsonargparse.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from icg.cli.functions import FUNCTION_COMMANDS, run_function
from icg.cli.recipes import resolve_config_names

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``icg`` console script (``argv``: the arguments after ``icg``; default ``sys.argv``)."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in FUNCTION_COMMANDS:
        run_function(argv[0], argv[1:])
        return
    try:
        argv = resolve_config_names(argv)
    except FileNotFoundError as error:
        raise SystemExit(f"icg: error: {error}") from None
    from icg.cli.lightning_cli import lightning_cli

    if from_command_line:  # LightningCLI warns when given args while sys.argv has some too
        sys.argv[1:] = argv
    lightning_cli(None if from_command_line else argv)
