"""``chanloss prune``: remove channels of a trained model (CPLI, L1, BN, Taylor, random)."""

from __future__ import annotations

import argparse

from chanloss.cli.arguments import add_set, int_at_least

NAME = "prune"
HELP = "remove channels of a trained model (CPLI, L1, BN, Taylor)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a last.pt or best.pt of a run")
    p.add_argument(
        "--out", required=True, help="output directory (new or empty; locked while pruning)"
    )
    p.add_argument(
        "--method",
        default="cpli",
        help="cpli (default), l1, bn_scale, taylor or random; see docs/pruning.md",
    )
    p.add_argument(
        "--speedup", type=float, default=2.0, help="MACs before / after (> 1; default 2)"
    )
    p.add_argument(
        "--finetune-epochs",
        type=int_at_least(0),
        default=0,
        metavar="E",
        help="fine-tune the pruned model for E epochs with the run's losses and recipe at "
        "prune.finetune_lr (default: a tenth of the run's lr); pruned.pt is the best on "
        "validation of right after pruning and each epoch",
    )
    p.add_argument(
        "--prune-features",
        action="store_true",
        help="also prune the feature layer that CC-Loss/MC-Loss read (evenly in MC's groups)",
    )
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-fit the layers reading each pruned group by least squares (default: on for "
        "cpli, off for the other methods)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines or table")
    add_set(p)


def run(args: argparse.Namespace) -> int:
    from chanloss.pruning import prune_checkpoint

    prune_checkpoint(
        args.checkpoint,
        args.out,
        method=args.method,
        speedup=args.speedup,
        finetune_epochs=args.finetune_epochs,
        overrides=args.overrides,
        prune_features=args.prune_features,
        refit=args.refit,
        device=args.device,
        verbose=not args.quiet,
    )
    return 0
