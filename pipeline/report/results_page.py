"""One results page per run: ``<run_root>/results/index.html`` with its images beside it.

Drawn from a :class:`pipeline.report.summary.RunSummary`; every image is a file in
the same folder, so the page can be copied or served as it is.
"""

from __future__ import annotations

import html
import os
import shutil

from components.index import executor as index_executor
from components.ingest import executor as ingest_executor
from components.join import executor as join_executor
from pipeline import nodes
from pipeline.report import curves, step_lines
from pipeline.report import summary as summary_lib
from pipeline.report.summary import RunSummary
from transforms import features

PAGE = "index.html"
_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
          "text-align:right}td:first-child,th:first-child{text-align:left}"
          "img{max-width:100%}pre{background:#f4f4f4;padding:8px;overflow-x:auto}")


def results_dir(run_root: str) -> str:
    """``<run_root>/results`` (absolute)."""
    return os.path.join(os.path.abspath(run_root), "results")


def write(run: RunSummary) -> str:
    """Writes the page and its images under the run root's ``results/``; returns its path."""
    out = results_dir(run.config.run_root)
    os.makedirs(out, exist_ok=True)
    body = []
    for name, section in _SECTIONS.items():
        title, content = section(run, out)
        body.append(f'<section id="{name}"><h2>{html.escape(title)}</h2>\n{content}</section>')
    path = os.path.join(out, PAGE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"<!doctype html>\n<html><head><meta charset='utf-8'><title>ssl4rec run "
                f"{html.escape(run.config.run_root)}</title><style>{_STYLE}</style></head>"
                f"<body><h1>ssl4rec run: <code>{html.escape(os.path.abspath(run.config.run_root))}"
                f"</code></h1>\n" + "\n".join(body) + "\n</body></html>\n")
    return path


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                    for row in rows)
    return f"<table><tr>{head}</tr>{cells}</table>\n"


def _missing(what: str) -> str:
    return f"<p><em>{html.escape(what)} did not run in this pipeline.</em></p>\n"


def _image(name: str, alt: str) -> str:
    return f'<p><img src="{html.escape(name)}" alt="{html.escape(alt)}"></p>\n'


def _data(run: RunSummary, out: str) -> tuple[str, str]:
    rows = []
    for node in (nodes.LOGS_EXAMPLE_GEN, nodes.CATALOG_EXAMPLE_GEN):
        if node in run.nodes:
            props = run.nodes[node].properties["examples"]
            rows.append([node, props.get(ingest_executor.ROWS_OK, 0), step_lines.rejects(props)])
    content = _table(["ingested", "rows", "rejected"], rows) if rows else _missing("Ingestion")
    if nodes.JOIN in run.nodes:
        props = run.nodes[nodes.JOIN].properties[join_executor.EXAMPLES_KEY]
        content += _table(["split", "rows", *features.BUCKETS], [
            [split, props.get(split, 0), *(props.get(f"{split}_{b}", 0) for b in features.BUCKETS)]
            for split in (features.CATALOG_SPLIT, features.TRAIN_SPLIT, features.EVAL_SPLIT)])
        head = f"{run.config.spec.head_fraction:.0%}"
        content += (f"<p>Log rows rejected, item not in catalog: "
                    f"{props.get(join_executor.REJECTED_UNKNOWN, 0)}. Head = top {head} of items "
                    "seen in training by frequency; cold = never seen in training.</p>\n")
    if run.vocabularies:
        content += _table(["vocabulary", "size"], [[k, v] for k, v in run.vocabularies.items()])
    return "Data", content


def _correlation(run: RunSummary, out: str) -> tuple[str, str]:
    if run.correlation is None:
        return "Feature correlations and CFM groups", _missing("FeatureCorrelation")
    from components.correlation import report as correlation_report

    content = ""
    for png in run.correlation_pngs:
        name = f"correlation_{os.path.basename(png)}"
        shutil.copyfile(png, os.path.join(out, name))
        content += _image(name, "feature correlation heat map")
    groups = "\n".join(correlation_report.describe_groups(run.correlation))
    content += f"<p>CFM groups ({html.escape(str(run.correlation.get('weighting')))} " \
               f"weighting):</p><pre>{html.escape(groups)}</pre>\n"
    return "Feature correlations and CFM groups", content


def _training(run: RunSummary, out: str) -> tuple[str, str]:
    content = ""
    for node, variant in run.trainers:
        model_run = run.nodes[node].outputs["model_run"][0]
        name = f"training_{node}.png"
        if curves.plot(model_run, f"{node} ({variant})", os.path.join(out, name)):
            content += f"<h3>{html.escape(node)} ({html.escape(variant)})</h3>" + _image(
                name, f"training curves of {node}")
        else:
            content += f"<p>{html.escape(node)}: no TensorBoard scalars in {model_run}.</p>"
    return "Training curves", content or _missing("Training")


def _index(run: RunSummary, out: str) -> tuple[str, str]:
    if nodes.INDEX not in run.nodes:
        return "Retrieval index", _missing(nodes.INDEX)
    props = run.nodes[nodes.INDEX].properties[index_executor.SCANN_MODEL_KEY]
    rows = [[k, f"{v:.4f}"] for k, v in sorted(props.items()) if k.startswith("recall_at_")]
    rows = rows or [["recall", "unmeasured: no eval queries"]]
    return "Retrieval index", (f"<p>{props.get('items')} items. ScaNN's recall against "
                               "brute-force search on eval queries:</p>"
                               + _table(["ScaNN vs brute force", "recall"], rows))


def _evaluation(run: RunSummary, out: str) -> tuple[str, str]:
    evaluation = run.evaluation
    if evaluation is None:
        return "Evaluation", _missing(nodes.EVALUATOR)
    from components.evaluate import report as eval_report

    eval_report.write_page(evaluation.uri, evaluation.metrics, out, evaluation.blessed,
                           evaluation.failures)
    rows = [row.split("|")[1:-1] for row in eval_report.table(evaluation.metrics,
                                                              markdown=True)]
    table = _table([c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[2:]])
    return "Evaluation", (table + _image(eval_report.CHART, "Recall@K by slice")
                          + f"<p>Evaluator output: <code>{html.escape(evaluation.uri)}</code>"
                          f" (also as <a href='{eval_report.PAGE}'>{eval_report.PAGE}</a>)</p>")


def _blessing(run: RunSummary, out: str) -> tuple[str, str]:
    if run.evaluation is None:
        return "Blessing", _missing(nodes.EVALUATOR)
    return "Blessing", f"<p><strong>{html.escape(summary_lib.verdict_line(run.evaluation))}" \
                       "</strong></p>\n"


def _pushed(run: RunSummary, out: str) -> tuple[str, str]:
    if not run.pushes:
        return "Pushed versions", _missing("Pusher")
    rows = [[node, p.get("pushed_version", "-") if p.get("pushed") else "not pushed",
             p.get("pushed_destination", "") if p.get("pushed") else ""]
            for node, p in run.pushes.items()]
    return "Pushed versions", _table(["pusher", "version", "destination"], rows)


def _commands(run: RunSummary, out: str) -> tuple[str, str]:
    lines = summary_lib.commands(run)
    if not lines:
        return "Commands", "<p>Nothing was pushed or trained in this run.</p>"
    return "Commands", "<p>Start the endpoint on the pushed models, and TensorBoard:</p>" \
                       f"<pre>{html.escape(chr(10).join(lines))}</pre>\n"


def _times(run: RunSummary, out: str) -> tuple[str, str]:
    rows = [[s.node_id, s.state, f"{s.seconds:.1f}"] for s in run.steps]
    total = sum(s.seconds for s in run.steps)
    return "Step times (ML Metadata)", (
        _table(["step", "state", "seconds"], rows)
        + f"<p>{total:.0f} s in steps; {run.wall_seconds:.0f} s from the first step's start "
          "to the last step's end.</p>\n")


_SECTIONS = {"data": _data, "correlation": _correlation, "training": _training, "index": _index,
             "evaluation": _evaluation, "blessing": _blessing, "pushed": _pushed,
             "commands": _commands, "times": _times}
SECTIONS = tuple(_SECTIONS)
