"""One self-contained HTML page per run: config, metrics, evaluation, diagnostics, every figure and
the interactive latent explorer, the figures embedded as PNG data URIs and the explorer's plotly.js
inline so the page can be mailed or archived on its own and opens offline."""
from __future__ import annotations

import base64
import html
import json
import math
import struct
import time
from pathlib import Path

from .. import rundir
from ..evaluate import ON_SIMPLEX, diagnostics
from .explorer import explorer_html
from .figures import FIGURES, Subject, draw_figures, load_test_split

REPORT = "report.html"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1000px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 1em; border-radius: 4px; }
.note { color: #666; font-style: italic; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])


def _e(value) -> str:
    return html.escape(str(value))


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:,}" if isinstance(v, int) else f"{v:,.{digits}f}"


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _evaluation(r: dict | None, run: Path) -> str:
    if r is None:
        return (f'<p class="note">Not evaluated yet: <code>aevb evaluate {_e(run)} --k 5000</code> writes '
                "<code>eval.json</code> (IWAE bounds and the importance-sampled log-likelihood), and the next report shows it.</p>")
    rows = [["ELBO (estimator A)", _num(r["elbo_A"]["elbo"])]]
    if "elbo_B" in r:
        rows.append(["ELBO (estimator B)", _num(r["elbo_B"]["elbo"])])
    key = "elbo_B" if "elbo_B" in r else "elbo_A"
    rows += [["&nbsp;&nbsp;reconstruction E[log p(x|z)]", _num(r[key]["log_px_z"])],
             ["&nbsp;&nbsp;KL(q(z|x) ‖ p(z))", _num(r[key]["kl"])]]
    if "kl_y" in r[key]:
        rows.append(["&nbsp;&nbsp;KL(q(y|x) ‖ p(y))", _num(r[key]["kl_y"])])
    rows += [[f"IWAE bound, k={_e(k)}", _num(v)] for k, v in r["iwae"].items()]
    ll = r["log_likelihood"]
    rows.append([f"log p(x), importance sampled (k={ll['k']})", f"{_num(ll['value'])} ± {_num(ll['standard_error'])}"])
    rows.append(["bits/dim", _num(r["bits_per_dim"], 4)])
    return f"<p>{r['n']:,} test datapoints, nats per datapoint (from <code>eval.json</code>).</p>" + \
        _table(["quantity", "value"], rows, {1})


def _diagnostics(d: dict, n: int) -> str:
    kl = d["kl_per_dim"]
    total = f", total KL {_num(sum(kl))} nats ({_e(d['kl_method'])})" if kl is not None else ""
    if d["active_units"] is None:
        out = f"<p>{d['latent_dim']} latent dimensions, active units {_e(ON_SIMPLEX)}; over {n:,} test datapoints{total}.</p>"
    else:
        out = (f"<p>{d['active_units']} of {d['latent_dim']} latent dimensions active "
               f"(Cov<sub>x</sub> E[z<sub>d</sub>|x] &gt; {d['threshold']}, Burda et al. 2015) over {n:,} test images{total}.</p>")
    if d["warning"]:
        out += f'<p class="warning"><b>Warning:</b> {_e(d["warning"])}</p>'
    return out


RESTORATIONS = {"impute": ("mask", "inpainting"), "denoise": ("noise", "denoising"), "superres": ("factor", "super-resolution")}


def _restorations(run: Path) -> str:
    """The tables and figures that ``aevb impute``, ``denoise`` and ``superres`` left in the run directory."""
    parts = []
    for command, (key, what) in RESTORATIONS.items():
        for file in sorted(run.glob(f"{command}-*.json")):
            try:
                r = json.loads(file.read_text())
                psnr_only = r["metric"] == "psnr"
                results = sorted(r["results"].items(), key=lambda kv: -kv[1] if psnr_only else kv[1])
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                continue
            rows = [[_e(name), _num(v, 2 if psnr_only else 5)] + ([_num(r["psnr"][name], 2)] if "psnr" in r else [])
                    for name, v in results]
            header = ["method", "PSNR (dB), higher is better" if psnr_only else f"{r['metric']} on the missing pixels, "
                      "lower is better"] + (["PSNR (dB)"] if "psnr" in r else [])
            parts.append(f"<h3>{what}, {key} {_e(r[key])}</h3><p>{r.get('n', '?')} test images.</p>"
                         + _table(header, rows, {1, 2}))
            png = file.with_suffix(".png")
            if png.is_file():
                w, h = png_size(png)
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_e(png.stem)}" width="{w}" '
                             f'height="{h}"><figcaption>Each row: a test image, then {"the masked input (missing pixels grey) and " if command == "impute" else ""}'
                             f"each answer, in the order of the JSON file. <code>{_e(png.name)}</code></figcaption></figure>")
    if not parts:
        return (f'<p class="note">None yet: <code>aevb impute {_e(run)} --mask random-0.5</code>, <code>aevb denoise '
                f"{_e(run)} --noise gaussian-0.3</code> and <code>aevb superres {_e(run)} --factor 4</code> use the model "
                "as the prior over images, against classical baselines.</p>")
    return "".join(parts)


def _metrics(records: list[dict]) -> str:
    if not records:
        return '<p class="note">No finished epoch yet.</p>'
    cols = [("epoch", "epoch", 0), ("samples_seen", "samples seen", 0), ("train_elbo", "train ELBO", 2),
            ("test_elbo", "test ELBO", 2), ("test_log_px_z", "test E[log p(x|z)]", 2), ("test_kl", "test KL", 2),
            ("beta", "β", 3), ("samples_per_sec", "samples/s", 0)]
    cols = [c for c in cols if any(c[0] in r for r in records)]
    rows = [[_num(r.get(k), d) for k, _, d in cols] for r in records]
    return _table([name for _, name, _ in cols], rows, set(range(len(cols))))


def _config(cfg: dict) -> str:
    parts = []
    for section, values in cfg.items():
        if section == "run":
            continue
        rows = [[f"<code>{_e(k)}</code>", _e(json.dumps(v))] for k, v in values.items()]
        parts.append(f"<h3>[{_e(section)}]</h3>" + _table(["key", "value"], rows))
    meta = cfg.get("run", {})
    rows = [[_e(k), _e(json.dumps(v))] for k, v in meta.items()]
    parts.append("<h3>run</h3>" + _table(["key", "value"], rows))
    return "".join(parts)


def _figure_html(name: str, path: Path | None, error: str | None) -> str:
    title = f"<h3>{_e(name)}</h3>"
    if path is None:
        return title + f'<p class="note">Not drawn: {_e(error)}</p>'
    w, h = png_size(path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (title + f'<figure><img src="data:image/png;base64,{data}" alt="{_e(name)}" width="{w}" height="{h}">'
            f"<figcaption>{_e(FIGURES[name].caption)} <code>{_e(path.name)}</code></figcaption></figure>")


def write_report(run: str | Path, path: str | Path | None = None, *, test_size: int | None = None,
                 device="cpu") -> Path:
    """Draw every figure of a run into its directory and write one self-contained HTML page
    (``RUN/report.html`` unless ``path``) with the config, the per-epoch metrics, the evaluation of
    ``eval.json`` where present, the diagnostics (active units, KL per dimension, collapse) and the
    figures embedded as data URIs. ``test_size``: draw from the first N test images only; the model
    runs on ``device``."""
    from ..api import load

    started = time.perf_counter()
    run = Path(run)
    rundir.read_config(run)
    config = json.loads((run / rundir.CONFIG).read_text())
    model = load(run, device)
    records = rundir.read_metrics(run)
    x, y, classes = load_test_split(run, test_size)
    subject = Subject(model, run, x, y, classes=classes)
    diag = diagnostics(model, x.to(device))
    evaluation = None
    if (run / "eval.json").is_file():
        try:
            evaluation = json.loads((run / "eval.json").read_text())
        except json.JSONDecodeError:
            evaluation = None

    sections = [_figure_html(name, drawn, reason) for name, drawn, reason in draw_figures(subject)]

    cfg, meta = config, config.get("run", {})
    last = records[-1] if records else {}
    m = cfg["model"]
    summary = (f"{_e(m['model'])} with a {_e(m['net'])} net (hidden {_e(m['hidden'])}, {_e(m['activation'])}), "
               f"{m['latent_dim']} latent dimensions, {_e(m['posterior'])} posterior, {_e(m['prior'])} prior, "
               f"{_e(m['likelihood'])} likelihood; data {_e(cfg['data']['dataset'])} "
               f"{_e(tuple(meta.get('x_shape', [])))} (binarize {_e(cfg['data']['binarize'])}"
               + (f"; {len(classes)} classes: {_e(', '.join(classes))}" if classes else "") + "); "
               f"trained {last.get('epoch', 0)} of {cfg['train']['epochs']} epochs"
               + (f", final test ELBO {_num(last.get('test_elbo'))} nats." if last else "."))
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aevb report: {_e(run.name)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>aevb report: {_e(run.name)}</h1>
<p>{summary}</p>
<p class="note">Run directory <code>{_e(run.resolve())}</code>; written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}
in {time.perf_counter() - started:.1f} s.</p>
<h2>Evaluation</h2>
{_evaluation(evaluation, run)}
<h2>Diagnostics</h2>
{_diagnostics(diag, len(x))}
<h2>Training</h2>
{_metrics(records)}
<h2>Figures</h2>
{''.join(sections)}
<h2>Latent explorer</h2>
{explorer_html(subject)}
<h2>Inpainting, denoising, super-resolution</h2>
{_restorations(run)}
<h2>Configuration</h2>
{_config(config)}
</body>
</html>
"""
    out = Path(path) if path is not None else run / REPORT
    rundir.write_text(out, page)
    return out
