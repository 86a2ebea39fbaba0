"""The ``aevb`` command: a thin shell over the Python API. A user's mistake prints one line and
exits with code 2."""
from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from .errors import ConfigError, UserError
from .registry import did_you_mean


class Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2) instead of printing usage."""

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            flag = message.split()[2]
            message += did_you_mean(flag, self.all_flags())
        raise ConfigError(f"{message}; see '{self.prog} --help'")

    def all_flags(self) -> list[str]:
        """Option strings of this parser and of its sub-commands."""
        flags = list(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    flags += sub._option_string_actions
        return flags


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per config field (--latent-dim, --likelihood, ...), type-checked by aevb.config."""
    from .config import SECTIONS, field_types

    for section in SECTIONS:
        group = parser.add_argument_group(f"[{section}] settings (override --config)")
        for name, (sec, tp) in field_types().items():
            if sec != section:
                continue
            flag = "--" + name.replace("_", "-")
            if tp is bool:
                group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
            elif typing.get_origin(tp) is list:
                group.add_argument(flag, dest=name, nargs="+", default=argparse.SUPPRESS, metavar="N")
            else:
                group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.split("_")[-1].upper())


def config_from_args(args) -> "Config":
    """Defaults, then the --config file (TOML, or a run's config.json), then the flags."""
    from .config import Config, apply, field_types, load_json, load_toml

    cfg = Config()
    if args.config:
        path = Path(args.config)
        d = load_json(path) if path.suffix == ".json" else load_toml(path)
        d.pop("run", None)
        apply(cfg, d, str(path))
    apply(cfg, {k: v for k, v in vars(args).items() if k in field_types()}, "the command line")
    return cfg


def cmd_train(args) -> None:
    from .train import train

    run = train(config_from_args(args), args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    print(f"run directory: {run}" if args.quiet else f"done; the run is in {run}")


def load_test_data(run: Path, n: int | None = None):
    """The test split of a run's dataset (first n images)."""
    from .data import load_dataset
    from .rundir import read_config

    cfg, _ = read_config(run)
    cfg.data.test_size = n
    cfg.data.train_size = 1
    return load_dataset(cfg.data).test_x


def cmd_evaluate(args) -> None:
    from .api import load
    from .evaluate import evaluate
    from .rundir import write_text

    run = Path(args.run)
    model = load(run)
    x = load_test_data(run, args.test_size)
    ks = sorted({1, 5, 50, args.k} if args.k >= 50 else {1, args.k})
    result = evaluate(model, x, ks, samples=args.samples, max_memory=int(args.max_memory * 2**20))
    write_text(run / "eval.json", json.dumps(result, indent=2) + "\n")
    print(format_evaluation(result))
    print(f"written to {run / 'eval.json'}")


def format_evaluation(r: dict) -> str:
    rows = [("ELBO (estimator A)", r["elbo_A"]["elbo"])]
    if "elbo_B" in r:
        rows.append(("ELBO (estimator B)", r["elbo_B"]["elbo"]))
    key = "elbo_B" if "elbo_B" in r else "elbo_A"
    rows += [("  reconstruction E[log p(x|z)]", r[key]["log_px_z"]), ("  KL(q(z|x) || p(z))", r[key]["kl"])]
    rows += [(f"IWAE bound, k={k}", v) for k, v in r["iwae"].items()]
    ll = r["log_likelihood"]
    lines = [f"test set: {r['n']} datapoints, nats per datapoint"] + [f"{name:<34}{v:>12.3f}" for name, v in rows]
    lines.append(f"{'log p(x), importance sampled':<34}{ll['value']:>12.3f}  ± {ll['standard_error']:.3f} (k={ll['k']})")
    lines.append(f"{'bits/dim':<34}{r['bits_per_dim']:>12.4f}")
    return "\n".join(lines)


def cmd_sample(args) -> None:
    import torch

    from .api import load
    from .viz import save_grid

    torch.manual_seed(args.seed)
    run = Path(args.run)
    path = save_grid(load(run).sample(args.n), args.out or run / "samples.png")
    print(f"wrote {args.n} samples to {path}")


def cmd_reconstruct(args) -> None:
    import torch

    from .api import load
    from .viz import save_grid

    run = Path(args.run)
    x = load_test_data(run, args.n)
    recon = load(run).reconstruct(x)
    pairs = torch.stack([x, recon], 1).flatten(0, 1)  # input, reconstruction, input, ...
    path = save_grid(pairs, args.out or run / "reconstructions.png", ncols=2 * min(8, len(x)))
    print(f"wrote {len(x)} test images beside their reconstructions to {path}")


def cmd_datasets(args) -> None:
    from .data import available

    for name, where in available(args.data_dir):
        print(f"{name:<15}{where or 'not here (aevb train --dataset ' + name + ' says how to get it)'}")
    print(f"{'npz:PATH':<15}your own arrays: numpy.savez(PATH, x_train=..., x_test=..., [y_train=..., y_test=...])")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> Parser:
    parser = Parser(prog="aevb", description="Variational autoencoders by Auto-Encoding Variational Bayes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("--config", help="a TOML file (see configs/) or a run's config.json")
    p.add_argument("--out", help="the run directory (default runs/MODEL-DATASET-TIME)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test-set ELBO (A and B), IWAE bounds and the IS log-likelihood")
    p.add_argument("run")
    p.add_argument("--k", type=positive_int, default=5000, help="importance samples (default 5000)")
    p.add_argument("--samples", type=positive_int, default=1, help="L, samples per datapoint for the ELBO")
    p.add_argument("--test-size", type=positive_int, help="evaluate on the first N test images only")
    p.add_argument("--max-memory", type=float, default=512, help="MiB for one batched decoder pass")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="a PNG grid of samples from the prior")
    p.add_argument("run")
    p.add_argument("--n", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="PNG path (default RUN/samples.png)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("reconstruct", help="a PNG grid of test images beside their reconstructions")
    p.add_argument("run")
    p.add_argument("--n", type=positive_int, default=32)
    p.add_argument("--out", help="PNG path (default RUN/reconstructions.png)")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("datasets", help="which datasets are available here, and from where")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except UserError as e:
        print(f"aevb: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aevb: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
