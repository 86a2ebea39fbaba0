"""The ``aevb`` command: a thin shell over the Python API. A user's mistake prints one line and
exits with code 2."""
from __future__ import annotations

import argparse
import json
import sys
import time
import typing
from pathlib import Path

from .errors import ConfigError, UserError
from .registry import did_you_mean

if typing.TYPE_CHECKING:  # the CLI imports the config lazily, so that --help stays fast
    from .config import Config


class Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2) instead of printing usage. A
    ``lazy_description`` callable, where set, writes the description when help is asked for (so
    that listing the labs does not import them on every command)."""

    lazy_description = None

    def format_help(self):
        if self.lazy_description is not None:
            self.description = self.lazy_description()
        return super().format_help()

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            flag = message[len("unrecognized arguments: "):].split(" ")[0]
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
    from .config import HELP, SECTIONS, field_types

    for section in SECTIONS:
        group = parser.add_argument_group(f"[{section}] settings (override --config)")
        for name, (sec, tp) in field_types().items():
            if sec != section:
                continue
            flag = "--" + name.replace("_", "-")
            kw = {"dest": name, "default": argparse.SUPPRESS, "help": HELP.get(name)}
            if tp is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            elif list in {typing.get_origin(t) for t in (tp, *typing.get_args(tp))}:  # list or Optional[list]
                item = next(typing.get_args(t)[0] for t in (tp, *typing.get_args(tp)) if typing.get_origin(t) is list)
                group.add_argument(flag, nargs="+", metavar="NAME" if item is str else "N", **kw)
            else:
                group.add_argument(flag, metavar=name.split("_")[-1].upper(), **kw)


def config_from_args(args) -> Config:
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
    from .distributed import launched_as_main
    from .train import train

    if args.resume and args.out and not args.config and (Path(args.out) / "config.json").is_file():
        args.config = str(Path(args.out) / "config.json")  # resume with the run's settings; flags given now override
    run = train(config_from_args(args), args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if not launched_as_main():  # under torchrun, rank 0 alone reports
        return
    print(f"run directory: {run}" if args.quiet else f"done; the run is in {run}")
    if not args.no_report:
        from .viz import write_report

        try:
            report = write_report(run)
        except UserError as e:  # the run itself is saved; say why the page is missing and go on
            print(f"aevb: warning: no report ({e}); the run is complete", file=sys.stderr)
            return
        if not args.quiet:
            print(f"report: {report}")


def load_test_data(run: Path, n: int | None = None):
    """The test split of a run's dataset (first n images) and its labels (None without)."""
    from .viz.figures import load_test_split

    x, y, _ = load_test_split(run, n)
    return x, y


HMC_SAMPLES = 500  # aevb evaluate --hmc-likelihood's default L


def cmd_evaluate(args) -> None:
    from .api import load
    from .evaluate import evaluate, format_evaluation
    from .rundir import checkpoint_epoch, write_text

    run = Path(args.run)
    device = device_of(args)
    model = load(run, device, args.checkpoint)
    x, y = load_test_data(run, args.test_size)
    ks = sorted({1, 5, 50, args.k} if args.k >= 50 else {1, args.k})
    if args.hmc_samples is not None and not args.hmc_likelihood:
        raise ConfigError("--hmc-samples applies with --hmc-likelihood; add it, or drop --hmc-samples")
    result = evaluate(model, x.to(device), ks, samples=args.samples, max_memory=int(args.max_memory * 2**20),
                      progress=sys.stderr.isatty(), y=None if y is None else y.to(device), precision=args.precision,
                      compile=args.compile, hmc_samples=(args.hmc_samples or HMC_SAMPLES) if args.hmc_likelihood else 0)
    result |= {"checkpoint": args.checkpoint, "epoch": checkpoint_epoch(run, args.checkpoint)}
    write_text(run / "eval.json", json.dumps(result, indent=2) + "\n")
    print(format_evaluation(result))
    print(f"written to {run / 'eval.json'}")


def device_of(args):
    """The --device of a command, resolved (auto: cuda, then mps, then cpu)."""
    from .train import resolve_device

    return resolve_device(args.device)


def cmd_sample(args) -> None:
    from .viz import fig_samples
    from .viz.figures import subject

    path = fig_samples(subject(args.run, device=device_of(args)), args.out, n=args.n, seed=args.seed)
    print(f"wrote {args.n} samples to {path}")


def cmd_reconstruct(args) -> None:
    from .viz import fig_reconstructions
    from .viz.figures import subject

    path = fig_reconstructions(subject(args.run, test_size=args.n, device=device_of(args)), args.out, n=args.n)
    print(f"wrote up to {args.n} test images beside their reconstructions to {path}")


PLOT_OPTIONS = ("n", "seed", "classes", "indices", "steps")  # flags of 'aevb plot' that figures take (FigureSpec.options)


def cmd_plot(args) -> None:
    from .rundir import read_config
    from .viz import FIGURES
    from .viz.figures import draw_figures

    run = Path(args.run)
    read_config(run)
    names = args.figures or list(FIGURES)
    for name in names:
        FIGURES[name]  # an unknown name fails here, with a suggestion
    if args.out and len(names) != 1:
        raise ConfigError(f"--out names one PNG, but {len(names)} figures were asked for; leave it out and they go to {run}/NAME.png")
    for option in PLOT_OPTIONS:
        applies = [name for name in FIGURES if option in FIGURES[name].options]
        if getattr(args, option) is not None and not set(applies) & set(names):
            raise ConfigError(f"--{option} applies to the {' and '.join(applies)} figure{'s' if len(applies) > 1 else ''} only")
    options = {k: getattr(args, k) for k in PLOT_OPTIONS}
    for name, path, reason in draw_figures(run, args.figures, args.out, test_size=args.test_size,
                                             device=device_of(args), **options):
        print(f"{name:<16}{path}" if path else f"skipped {name}: {reason}")


def figure_names() -> str:
    """The registered figures with their one-line summaries, for 'aevb plot --help'."""
    from .viz import FIGURES

    return "Draw figures of a trained run into RUN/NAME.png (all that apply without FIGURE).\n\n" + "\n".join(
        f"  {name:<16} {FIGURES[name].summary}" for name in FIGURES)


def cmd_report(args) -> None:
    from .viz import write_report

    print(f"wrote {write_report(args.run, args.out, test_size=args.test_size, device=device_of(args))}")


def cmd_impute(args) -> None:
    from .api import load
    from .data import in_memory, load_dataset
    from .experiments.imputation import METHODS, compare, format_record, write
    from .rundir import read_config

    run = Path(args.run)
    cfg, _ = read_config(run)
    model = load(run, device_of(args))
    cfg.data.test_size = args.test_size
    data = load_dataset(cfg.data)
    methods = METHODS if args.method == "all" else (args.method,)
    x = in_memory(data.test_x)
    record, fills, missing = compare(model, x, in_memory(data.train_x), args.mask, methods, args.samples,
                                     args.sweeps, args.chains, args.seed)
    json_path, png = write(run, record, fills, x, missing)
    print(format_record(record))
    print(f"wrote {json_path} and {png}")


def restoration_inputs(args):
    """The model of a run on --device, its first --test-size test images and the run directory."""
    from .api import load
    from .rundir import read_config

    run = Path(args.run)
    read_config(run)
    x, _ = load_test_data(run, args.test_size)
    return load(run, device_of(args)), x, run


def cmd_denoise(args) -> None:
    from .experiments.restoration import denoising, format_record, parse_noise, write

    parse_noise(args.noise)  # a bad level fails before anything is loaded
    model, x, run = restoration_inputs(args)
    record, images = denoising(model, x, args.noise, args.samples, args.seed)
    paths = write(run, f"denoise-{args.noise}", record, x, images)
    print(format_record(f"denoising ({args.noise}, median filter of size {record['median_filter_size']})", record))
    print(f"wrote {paths[0]} and {paths[1]}")


def cmd_superres(args) -> None:
    from .experiments.restoration import format_record, super_resolution, write

    model, x, run = restoration_inputs(args)
    record, images = super_resolution(model, x, args.factor, args.samples, args.seed)
    paths = write(run, f"superres-x{args.factor}", record, x, images)
    print(format_record(f"super-resolution ×{args.factor}", record))
    print(f"wrote {paths[0]} and {paths[1]}")


def lab_names() -> str:
    """The registered lab demonstrations with the first line of their docstrings, for --help."""
    try:
        from .lab import LABS
    except Exception as e:  # the lab is optional for everything else; say why it is missing
        return f"The lab could not be loaded here ({type(e).__name__}: {e})."
    lines = ["Numerical demonstrations of the theory. Each writes a figure (lab-NAME.png in --out) and prints "
             "its key numbers. Available:"]
    for name in LABS.names():
        doc = (getattr(LABS[name], "__doc__", None) or "").strip().splitlines()
        lines.append(f"  {name:<22}{doc[0] if doc else ''}")
    return "\n".join(lines)


def cmd_lab(args) -> None:
    from .lab import LABS

    run = LABS[args.name]
    out = Path(args.out)
    result = run(out, args.seed, quick=True) if args.quick else run(out, args.seed)
    print(result.format())
    print(f"figure: {result.figure}")


def cmd_experiment_ssl(args) -> None:
    from .experiments.ssl import Settings, parse_labels, run_ssl

    out = Path(args.out or f"experiments/ssl-{args.dataset.replace(':', '-').replace('/', '-')}")
    settings = Settings(dataset=args.dataset, labels=parse_labels(args.labels), seeds=args.seeds, out=out,
                        data_dir=args.data_dir, epochs=args.epochs, train_size=args.train_size,
                        test_size=args.test_size, classifier=args.classifier, quiet=args.quiet,
                        device=args.device, precision=args.precision, jobs=args.jobs)
    started = time.perf_counter()
    print(run_ssl(settings))
    print(f"wrote {out}/table.md, table.csv and table.json in {(time.perf_counter() - started) / 60:.1f} min")


def ssl_description() -> str:
    from .experiments.ssl import default_budget

    return ("Test accuracy of logistic regression and a net on pixels, logistic regression on VAE, M1 and PC-VAE "
            "latents, the PC-VAE's own classifier, M2 and M1+M2, for each --labels setting, mean and 95% interval "
            "over --seeds, with the published accuracy beside ours where a paper gives one (MNIST). Default budget, "
            f"epochs per model: {default_budget()} (--epochs sets them all). Writes OUT/table.md, OUT/table.csv, "
            "OUT/table.json (with the budget: epochs, precision, machine, wall clock, training time), "
            "OUT/results.jsonl, OUT/figures/ and the runs; run it again with the same settings to continue a "
            "stopped experiment.")


def cmd_experiment_theta(args) -> None:
    from .experiments.theta import run_theta

    out = Path(args.out or f"experiments/theta-{args.budget}")
    started = time.perf_counter()
    print(run_theta(args.budget, out, args.data_dir, quiet=args.quiet))
    print(f"wrote {out}/table.md and {out}/results.json in {(time.perf_counter() - started) / 60:.1f} min")


def cmd_reproduce(args) -> None:
    from .reproduce import REPRODUCTIONS, listing, reproduction

    if args.list or not args.name:
        print(listing())
        return
    if args.name not in REPRODUCTIONS:
        raise ConfigError(f"unknown reproduction {args.name!r}; choose one of: {', '.join(REPRODUCTIONS)} "
                          "(aevb reproduce --list)")
    r = reproduction(args.name)
    options = {key: getattr(args, key) for key in ("rows", "dataset") if getattr(args, key) is not None}
    for key in options.keys() - set(r.options):
        raise ConfigError(f"--{key} does not apply to {args.name}" + (f"; it takes --{', --'.join(r.options)}"
                                                                     if r.options else ""))
    out = Path(args.out or f"reproduce/{args.name}-{args.budget}")
    started = time.perf_counter()
    print(r.reproduce(args.budget, out, data_dir=args.data_dir, quiet=args.quiet, **options))
    print(f"wrote {out} in {(time.perf_counter() - started) / 60:.1f} min")


def cmd_embed(args) -> None:
    from .api import embed_h5ad

    out = embed_h5ad(args.run, args.data, args.out, layer=args.layer, device=device_of(args))
    print(f"wrote {out} with the posterior means as obsm['X_aevb']")


def cmd_topics(args) -> None:
    from .api import load
    from .data import load_dataset, vocabulary
    from .rundir import read_config, write_text
    from .topics import evaluate_topics, format_topics

    run = Path(args.run)
    device = device_of(args)
    model = load(run, device)
    cfg, _ = read_config(run)
    data = load_dataset(cfg.data)
    corpus = torch_cat_cpu(data.train_x, data.test_x)
    result = evaluate_topics(model, data.test_x.to(device), corpus, vocabulary(cfg.data), args.top, args.samples)
    write_text(run / "topics.json", json.dumps(result, indent=2) + "\n")
    print(format_topics(result))
    print(f"written to {run / 'topics.json'}")


def torch_cat_cpu(*parts):
    """The rows of several tensors as one numpy array (the reference corpus of the NPMI)."""
    import numpy as np

    return np.concatenate([p.cpu().numpy() for p in parts])


def cmd_datasets(args) -> None:
    from .data import available

    found = available(args.data_dir)
    width = max(len(name) for name, _ in found) + 2
    for name, where in found:
        print(f"{name:<{width}}{where or 'not here (aevb train --dataset ' + name + ' says how to get it)'}")
    print(f"{'npz:PATH':<{width}}your own arrays: "
          "numpy.savez(PATH, x_train=..., x_test=..., [y_train=..., y_test=...]), or a folder of such shards")
    print(f"{'npy:PATH':<{width}}your own examples (N, ...) in one numpy.save file, no labels; --stream reads it "
          "from disk")
    print(f"{'folder:PATH':<{width}}your own PNG/JPEG images, one sub-folder per class (optional), "
          "optionally in train/ and test/")
    print(f"{'h5ad:PATH':<{width}}your own AnnData file (--layer, --label-key, --batch-key; pip install aevb[anndata])")
    print(f"{'ldac:PATH':<{width}}your own bags of words in LDA-C ('M id:count ...' a line), the vocabulary in "
          "PATH.tokens, PATH.vocab or vocab.txt")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: cuda, then mps, then cpu)")


def build_parser() -> Parser:
    from .config import PRECISION

    parser = Parser(prog="aevb", description="Variational autoencoders by Auto-Encoding Variational Bayes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("--config", help="a TOML file (see configs/) or a run's config.json")
    p.add_argument("--out", help="the run directory (default runs/MODEL-DATASET-TIME)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--no-report", action="store_true", help="do not write RUN/report.html at the end")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test-set ELBO (A and B), IWAE bounds, the IS log-likelihood and collapse diagnostics",
                       description="Test-set ELBO (estimators A and B), the IWAE bound for k = 1, 5, 50 and --k, the "
                       "importance-sampled log-likelihood with its standard error, ESS and Pareto k̂, bits/dim, KL per "
                       "latent dimension and active units (Burda et al. 2015), with a warning when the posterior has "
                       "collapsed or k̂ > 0.7 is common. Writes RUN/eval.json.")
    p.add_argument("run")
    p.add_argument("--k", type=positive_int, default=5000, help="importance samples (default 5000)")
    p.add_argument("--samples", type=positive_int, default=1, help="L, samples per datapoint for the ELBO")
    p.add_argument("--test-size", type=positive_int, help="evaluate on the first N test images only")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last",
                   help="last (model.safetensors, default) or best (best.safetensors: the best validation ELBO)")
    p.add_argument("--precision", choices=PRECISION, default="32",
                   help="the networks in bf16 or fp16 (16-mixed: CUDA), everything else fp32 (default 32: fp32 throughout)")
    add_device_flag(p)
    p.add_argument("--compile", action="store_true", help="compile the importance-sampling pass (torch.compile: "
                   "~10 s once, then faster passes; worth it for large k)")
    p.add_argument("--max-memory", type=positive_float, default=512,
                   help="MiB at most for one batched decoder pass of many datapoints' samples (default 512; "
                        "on the CPU passes stay under 64 MiB, where they run fastest)")
    p.add_argument("--hmc-likelihood", action="store_true",
                   help="also log p(x) by Kingma & Welling 2013's appendix D estimator: HMC posterior samples, no "
                        "encoder needed (the one for --algorithm mcem runs); costly: try --test-size 100 first")
    p.add_argument("--hmc-samples", type=positive_int, help=f"--hmc-likelihood: L, the HMC samples per chain for the "
                   f"fit and again for the estimate, 4 chains per datapoint (default {HMC_SAMPLES})")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="a PNG grid of samples from the prior")
    p.add_argument("run")
    p.add_argument("--n", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="PNG path (default RUN/samples.png)")
    add_device_flag(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("reconstruct", help="a PNG grid of test images beside their reconstructions")
    p.add_argument("run")
    p.add_argument("--n", type=positive_int, default=32)
    p.add_argument("--out", help="PNG path (default RUN/reconstructions.png)")
    add_device_flag(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("plot", help="figures of a run as PNG ('aevb plot --help' lists them)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.lazy_description = figure_names
    p.add_argument("run")
    p.add_argument("figures", nargs="*", metavar="FIGURE", help="figures listed above (default: all that apply)")
    p.add_argument("--out", help="PNG path, with one FIGURE (default RUN/FIGURE.png)")
    p.add_argument("--test-size", type=positive_int, help="draw from the first N test images only")
    p.add_argument("--n", type=positive_int, help="samples: images (64); reconstructions: pairs (32); manifold: grid side (20)")
    p.add_argument("--seed", type=int, help="samples: seed of the prior draws (0)")
    p.add_argument("--classes", type=int, nargs=2, metavar=("A", "B"), help="interpolation: from the first test image labelled A to the first labelled B (3 5)")
    p.add_argument("--indices", type=int, nargs=2, metavar=("I", "J"), help="interpolation: between test images I and J")
    p.add_argument("--steps", type=positive_int, help="interpolation: decoded points on each path (10)")
    add_device_flag(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="RUN/report.html: one self-contained page with config, metrics and every figure")
    p.add_argument("run")
    p.add_argument("--out", help="HTML path (default RUN/report.html)")
    p.add_argument("--test-size", type=positive_int, help="draw the figures from the first N test images only")
    add_device_flag(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("impute", help="fill missing pixels of test images with the model as the prior (inpainting)",
                       description="Fill the pixels that --mask hides in test images, by pseudo-Gibbs (Rezende et al. "
                       "2014), Metropolis-within-Gibbs (Mattei & Frellsen 2018) and self-normalised importance sampling, "
                       "against the training mean image and scikit-learn's KNNImputer; the error on the missing pixels "
                       "goes to RUN/impute-MASK.json and a figure to RUN/impute-MASK.png.")
    p.add_argument("run")
    p.add_argument("--mask", required=True, help="random-<fraction>, top-half, bottom-half, left-half, right-half, "
                   "center-<size>, or a .npy/.png mask of the image's size (non-zero: missing)")
    p.add_argument("--method", default="all", choices=["all", "pseudo-gibbs", "metropolis-gibbs", "importance"])
    p.add_argument("--test-size", type=positive_int, default=300, help="test images to fill (default 300)")
    p.add_argument("--samples", type=positive_int, default=5000, help="importance samples per image (default 5000)")
    p.add_argument("--sweeps", type=positive_int, default=None,
                   help="sweeps of each Gibbs chain (default: pseudo-Gibbs 50, Metropolis-within-Gibbs 200)")
    p.add_argument("--chains", type=positive_int, default=20,
                   help="independent chains per image, and the importance proposal's mixture components (default 20)")
    p.add_argument("--seed", type=int, default=0, help="the random mask and the samplers' seed")
    add_device_flag(p)
    p.set_defaults(func=cmd_impute)

    for name, func, what in (("denoise", cmd_denoise, "remove Gaussian noise from test images with the model as the prior"),
                             ("superres", cmd_superres, "upsample average-pooled test images with the model as the prior")):
        p = sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + " (the posterior mean of the clean "
                           "image by importance sampling over z), against classical baselines; PSNR into RUN/*.json "
                           "and a figure into RUN/*.png.")
        p.add_argument("run")
        if name == "denoise":
            p.add_argument("--noise", required=True, help="gaussian-<σ>, σ in (0, 1], e.g. gaussian-0.3")
        else:
            p.add_argument("--factor", type=positive_int, required=True, help="2 or 4 for 28×28 images: the block size of the pooling")
        p.add_argument("--test-size", type=positive_int, default=300, help="test images (default 300)")
        p.add_argument("--samples", type=positive_int, default=2000, help="importance samples per image (default 2000)")
        p.add_argument("--seed", type=int, default=0)
        add_device_flag(p)
        p.set_defaults(func=func)

    p = sub.add_parser("lab", help="numerical demonstrations of the theory ('aevb lab --help' lists them)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.lazy_description = lab_names
    p.add_argument("name", metavar="NAME", help="the demonstration to run")
    p.add_argument("--out", default="lab", help="folder for the figure (default ./lab)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer samples: seconds instead of minutes")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("experiment", help="table reproductions ('ssl': semi-supervised accuracy; 'theta': ML, MAP, VB)")
    exp = p.add_subparsers(dest="experiment", required=True, parser_class=Parser)
    p = exp.add_parser("ssl", help="semi-supervised accuracy: pixels, VAE, M1, PC-VAE, M2, M1+M2")
    p.lazy_description = ssl_description
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, cifar10 (conv nets), digits or npz:PATH")
    p.add_argument("--labels", default="100", help="labelled training images, comma-separated counts (equal per class; "
                   "Kingma et al.'s 100, 600, 1000, 3000) or 'all' for the 80/20 split (default 100)")
    p.add_argument("--seeds", type=positive_int, default=5, help="seeds 1..N (default 5)")
    p.add_argument("--out", help="the experiment folder (default experiments/ssl-DATASET)")
    p.add_argument("--epochs", type=positive_int, help="every model's epochs (default: each model's own, listed above)")
    p.add_argument("--jobs", type=positive_int, default=1, help="train models and compute cells in N processes at "
                   "once, each with cores/N torch threads (default 1: in this process)")
    p.add_argument("--precision", choices=PRECISION, default="32",
                   help="the models' training precision (bf16-mixed: fast only on a CPU with native bf16; default 32)")
    p.add_argument("--train-size", type=positive_int, help="the first N training images only (quick runs)")
    p.add_argument("--test-size", type=positive_int, help="the first N test images only (quick runs)")
    p.add_argument("--data-dir")
    p.add_argument("--classifier", choices=["logistic", "svm"], default="logistic",
                   help="the classifier on pixels and latents, rows (a) (c) (d) (e): scikit-learn logistic "
                   "regression (default) or an RBF-kernel SVM")
    p.add_argument("--quiet", action="store_true", help="print the table only")
    add_device_flag(p)
    p.set_defaults(func=cmd_experiment_ssl)

    p = exp.add_parser("theta", help="θ by ML, MAP and full VB on 1,000 MNIST images: test ELBO and log-likelihood",
                       description="Train the pytorch-examples VAE on the first 1,000 MNIST training images with "
                       "--theta ml, map and vb, three seeds each, and evaluate the test ELBO and IS log-likelihood. "
                       "Writes OUT/table.md, OUT/results.json and the runs; run it again to continue.")
    p.add_argument("--budget", choices=["quick", "paper"], default="quick",
                   help="quick: 50 epochs, 1,000 test images, k = 1000; paper: 500 epochs, all test images, k = 5000")
    p.add_argument("--out", help="the experiment folder (default experiments/theta-BUDGET)")
    p.add_argument("--data-dir")
    p.add_argument("--quiet", action="store_true", help="print the table only")
    p.set_defaults(func=cmd_experiment_theta)

    p = sub.add_parser("reproduce", help="a paper's table or figure by one command ('aevb reproduce --list' names them)",
                       description="Train and evaluate every row of a paper's table, or every curve of its figure, "
                       "within a budget; writes the runs in OUT/runs, OUT/results.json and the paper's result beside "
                       "ours (OUT/table.md for a table; OUT/FIG.png and OUT/page.md for a figure); run it again to "
                       "continue where it stopped.")
    p.add_argument("name", nargs="?", help="the reproduction, e.g. burda2015 or kingma2013-fig2")
    p.add_argument("--list", action="store_true", help="name every reproduction with its budgets")
    p.add_argument("--budget", choices=["smoke", "quick", "paper"], default="quick",
                   help="smoke: seconds (a check); quick: minutes to hours on a CPU; paper: the paper's own schedule")
    p.add_argument("--rows", help="comma-separated rows of the table (default: all); burda2015: "
                   "{vae,iwae}-k{1,5,50}-{1,2}layer, e.g. vae-k1-1layer,iwae-k5-1layer")
    p.add_argument("--dataset", help="kingma2013-fig2 and -fig4: mnist (default) or frey-face")
    p.add_argument("--out", help="the folder (default reproduce/NAME-BUDGET)")
    p.add_argument("--data-dir")
    p.add_argument("--quiet", action="store_true", help="print the table only")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("embed", help="a copy of an .h5ad file with the posterior means E[z|x] as obsm['X_aevb']")
    p.add_argument("run")
    p.add_argument("--data", required=True, help="the .h5ad file to embed (its genes those the run was trained on)")
    p.add_argument("--out", required=True, help="the .h5ad file to write (a copy of --data with obsm['X_aevb'])")
    p.add_argument("--layer", help="the layer to embed (default: the run's --layer, else X)")
    add_device_flag(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("topics", help="a topic model's topics, their NPMI coherence and the held-out perplexity",
                       description="For a model with topic proportions on the simplex (--posterior logistic_normal or "
                       "dirichlet) trained on bags of words (configs/prodlda.toml): each topic's top words with their "
                       "NPMI coherence on the documents' co-occurrences (train and test), and the perplexity of the "
                       "test documents from the ELBO. Writes RUN/topics.json.")
    p.add_argument("run")
    p.add_argument("--top", type=positive_int, default=10, help="words per topic (default 10)")
    p.add_argument("--samples", type=positive_int, default=20, help="samples per document for the ELBO (default 20)")
    add_device_flag(p)
    p.set_defaults(func=cmd_topics)

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
    except KeyboardInterrupt as e:  # TrainingInterrupted says where the checkpoint is and has its exit code
        print(f"aevb: {str(e) or 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
