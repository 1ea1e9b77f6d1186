"""``chanloss config``: the resolved, validated config (a dry run)."""

from __future__ import annotations

import argparse

from chanloss.cli.arguments import add_set

NAME = "config"
HELP = "print the resolved, validated config (every default filled in; a dry run)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    add_set(p)


def run(args: argparse.Namespace) -> int:
    from chanloss.config import dump_config, load_config
    from chanloss.run.builders import preflight

    config = load_config(args.config, args.overrides)
    preflight(config)  # the checks that need no data, as train makes them before loading it
    print(dump_config(config), end="", flush=True)
    return 0
