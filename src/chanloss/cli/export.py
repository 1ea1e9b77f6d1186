"""``chanloss export``: a checkpoint as TorchScript or ONNX (images -> class scores)."""

from __future__ import annotations

import argparse

from chanloss.cli.arguments import add_checkpoint

NAME = "export"
HELP = "export a checkpoint as TorchScript or ONNX (images -> scores)"


def configure(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    p.add_argument(
        "--format",
        default=None,
        choices=("torchscript", "onnx"),
        help="torchscript or onnx (needs the onnx package: pip install onnx); default: from "
        "the suffix of --out (.onnx: onnx), else torchscript",
    )
    p.add_argument(
        "--out", help="output file (default: the checkpoint's path with .torchscript.pt or .onnx)"
    )


def run(args: argparse.Namespace) -> int:
    from chanloss.inference import export_format, export_model

    format = export_format(args.out, args.format)
    path = export_model(args.checkpoint, args.out, format=format)
    print(f"exported {args.checkpoint} ({format}) to {path}", flush=True)
    return 0
