"""One ``python -m pipeline run``: every configuration run and watched, then reported.

The console shows progress lines; everything else goes to the run's log
(:mod:`pipeline.report.console`). A failure is reported as the step, the
innermost error and the log's path; bad input exits 2, other failures 1.
"""

from __future__ import annotations

import re
import traceback
from typing import Callable

from pipeline.config import PipelineConfig
from pipeline.report import console

#: Errors of the user's input (spec, data): exit code 2 instead of 1.
USER_ERRORS = ("SpecError", "InputError")
_ERROR_LINE = re.compile(r"^(?:[\w]+\.)*(\w+(?:Error|Exception)): (.+)$")


def run(configs: Callable[[], list[PipelineConfig]], runner_name: str, log_path: str,
        verbose: bool) -> int:
    """Runs each configuration ``configs()`` returns, then prints the summary; the exit code.

    ``configs`` is called with the console open, so the checks it makes (spec,
    preflight) are reported like any failure.
    """
    with console.Console(log_path, verbose=verbose) as out:
        out.say(f"Log: {out.log_path}" + ("" if verbose else " (--verbose streams it)"))
        watcher = None
        try:
            from pipeline import runner
            from pipeline.report import progress, step_lines, summary

            checked = configs()
            for config in checked:
                if len(checked) > 1:
                    out.say(f"Span {config.span}:")
                watcher = progress.StepWatcher(
                    out.say, lambda node, c=config: step_lines.describe(c, node),
                    total=len(summary.node_ids(config)))
                with progress.watching(watcher):
                    runner.run(config, runner_name)
            from pipeline.report import results_page

            run_summary = summary.collect(checked[-1])
            out.say(summary.render(run_summary, page=results_page.write(run_summary)))
            return 0
        except Exception as e:  # noqa: BLE001 (every failure is reported, then re-classified)
            traceback.print_exc()
            step = watcher.unfinished[-1] if watcher and watcher.unfinished else None
            kind, message = reason(e)
            out.say(f"FAILED{' in step ' + step if step else ''}: {kind}: {message}")
            out.say(f"Full detail: {out.log_path}")
            return 2 if kind in USER_ERRORS else 1


def reason(error: BaseException) -> tuple[str, str]:
    """(error type, message) of the innermost error behind ``error``.

    An error raised inside a Beam worker process reaches the runner as a
    ``RuntimeError`` whose text holds the worker's traceback; the last
    ``<module>.<Type>: <message>`` line in it names the original error.
    """
    text = str(error).strip()
    found = [m for m in map(_ERROR_LINE.match, text.splitlines()) if m]
    if not found:
        return type(error).__name__, (text.splitlines() or [""])[0]
    kind, message = found[-1].groups()
    return kind, re.sub(r" \[while running '[^']*'\]$", "", message)
