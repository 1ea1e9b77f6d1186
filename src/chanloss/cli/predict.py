"""``chanloss predict``: classify image files with a trained checkpoint."""

from __future__ import annotations

import argparse

from chanloss.cli.arguments import add_checkpoint, int_at_least

NAME = "predict"
HELP = "classify image files with a trained checkpoint"


def configure(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively"
    )
    p.add_argument(
        "--topk", type=int_at_least(1), default=1, metavar="K", help="classes per image (1)"
    )
    p.add_argument("--out", metavar="FILE.csv", help="write the predictions to this CSV file")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from chanloss.inference import load_model, predict, write_predictions

    model = load_model(args.checkpoint, device=args.device)
    predictions = predict(model, args.paths, topk=args.topk)
    if args.out:
        write_predictions(predictions, args.out)
        print(f"{len(predictions)} predictions in {args.out}", flush=True)
        return 0
    width = max(len(p.path) for p in predictions)
    for p in predictions:
        ranked = "  ".join(
            f"{name} {100 * prob:.1f}%"
            for name, prob in zip(p.classes, p.probabilities, strict=True)
        )
        print(f"{p.path:<{width}}  {ranked}", flush=True)
    return 0
