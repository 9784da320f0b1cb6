"""The endpoint's console: its own few lines on the terminal, TensorFlow's detail in the log.

The console class is checked in a subprocess without TensorFlow (fast); the
command ``python -m serving.server`` is checked as a subprocess on exported
models (slow: TensorFlow starts and the models load in it).
"""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

from serving import server as server_cli
from serving.models import LoadReport

# TensorFlow's C++ logging ("2026-01-01 10:00:00.123456: I tensorflow/...",
# "I0000 00:00:...") and Python's warnings / tracebacks / logging.
TF_CPP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |[IWEF]\d{4} \d\d:\d\d:\d\d)")
NOISE = re.compile(r"Warning:|Traceback|Exception ignored|^(WARNING|INFO|ERROR):|^\s+File \"")
LOG_LINE = re.compile(r"^Log: (?P<path>\S+) \(--verbose streams it\)$")
LOAD_LINE = re.compile(r"^\d\d:\d\d:\d\d loaded (?P<name>\S+) version (?P<version>\d+) "
                       r"in \d+\.\d s$")
SERVING_LINE = re.compile(r"^serving \[(?P<names>[^\]]*)\]: REST (?P<url>http://\S+) "
                          r"gRPC (?P<grpc>\S+)$")
START_SECONDS = 600         # TensorFlow's start and two model loads, on a busy machine


def _env():
    """This environment with TensorFlow's own logging defaults (nothing silenced)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    return dict(env, TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0")


_CONSOLE_SCRIPT = textwrap.dedent("""\
    import os, sys, warnings
    from serving import console
    with console.Console(sys.argv[1], verbose=sys.argv[2] == "1",
                         stream=console.STDERR) as out:
        out.say("status line")
        os.write(2, b"2026-01-01 10:00:00.000001: W tensorflow/x.cc:1] C++ noise\\n")
        print("python print", flush=True)
        warnings.warn("a python warning")
        out.say("result line", stream=console.STDOUT)
    print("after the console")
    """)


@pytest.mark.parametrize("verbose", [False, True])
def test_console_routes_the_process_output_to_the_log(tmp_path, verbose):
    log = tmp_path / "logs" / "x.log"
    done = subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT, str(log), str(int(verbose))],
                          env=_env(), capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout == "result line\nafter the console\n"
    in_order = ["status line", "C++ noise", "python print", "a python warning"]
    if verbose:     # the log streamed to stderr, the console's own lines once each, in order
        assert done.stderr.count("status line") == 1 and "result line" not in done.stderr
        assert [done.stderr.index(part) for part in in_order] == \
            sorted(done.stderr.index(part) for part in in_order), done.stderr
    else:
        assert done.stderr == "status line\n"
    text = log.read_text()
    in_order = ["[console] status line\n", *in_order[1:], "[console] result line\n"]
    assert [text.index(part) for part in in_order] == sorted(text.index(p) for p in in_order)
    assert "after the console" not in text


def test_bad_model_flag_is_refused_before_anything_starts(capsys):
    with pytest.raises(SystemExit) as e:
        server_cli.main(["--model", "no-equals-sign"])
    assert e.value.code == 2
    assert "--model: expected NAME=BASE_DIR, got 'no-equals-sign'" in capsys.readouterr().err


def test_load_lines_name_the_model_version_and_time():
    line = server_cli.load_line(LoadReport("tiny", 7, "/m/tiny/7", 2.345))
    assert LOAD_LINE.match(line) and line.endswith(" loaded tiny version 7 in 2.3 s")
    failed = server_cli.load_line(LoadReport("tiny", 8, "/m/tiny/8", 0.1, "OSError: gone"))
    assert failed.endswith(" FAILED tiny version 8: OSError: gone (not served; /m/tiny/8)")


class _Endpoint:
    """``python -m serving.server`` on ports the OS picks.

    ``lines`` holds what it wrote to stdout, with stderr interleaved in
    order unless ``separate``; then stderr is read to ``err_lines``
    alongside (so that no pipe fills up while the test waits).
    """

    def __init__(self, bases, log_dir, *flags, separate=False, preexec_fn=None):
        cmd = [sys.executable, "-m", "serving.server", "--rest-port", "0", "--grpc-port", "0",
               "--log-dir", str(log_dir), *flags]
        for name, base in bases.items():
            cmd += ["--model", f"{name}={base}"]
        self.proc = subprocess.Popen(
            cmd, env=_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if separate else subprocess.STDOUT, text=True,
            preexec_fn=preexec_fn)
        self.lines, self.err_lines = [], []
        self._queue = queue.Queue()
        self._readers = [threading.Thread(target=self._read, daemon=True)]
        if separate:
            self._readers.append(threading.Thread(
                target=lambda: self.err_lines.extend(
                    line.rstrip("\n") for line in self.proc.stderr), daemon=True))
        for reader in self._readers:
            reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern, seconds=START_SECONDS):
        """The first line matching ``pattern``; fails at the deadline or if the process ends."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern.pattern} within {seconds} s: "
                            f"{self.lines}")
            assert line is not None, f"the endpoint ended ({self.proc.wait()}): {self.lines}"
            self.lines.append(line)
            if match := pattern.search(line):
                return match

    def interrupt(self, number=signal.SIGINT):
        """Ctrl-C (or signal ``number``); returns the exit code once every line is read."""
        self.proc.send_signal(number)
        code = self.proc.wait(timeout=120)
        for reader in self._readers:
            reader.join(timeout=60)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from tests.test_serving import export_models

    return export_models(tmp_path_factory.mktemp("pushed"))["bases"]


def _tf_startup_lines():
    """The bodies (after the time stamp) of TF's C++ lines when TF starts here."""
    done = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.constant(1) + 1"],
                          env=_env(), capture_output=True, text=True, timeout=300, check=True)
    return [TF_CPP.sub("", line).split("] ", 1)[-1] for line in done.stderr.splitlines()
            if TF_CPP.search(line)]


@pytest.mark.slow
def test_endpoint_console_shows_its_lines_and_the_log_holds_tensorflows(bases, tmp_path):
    endpoint = _Endpoint(bases, tmp_path / "logs")
    try:
        serving = endpoint.wait_for(SERVING_LINE)
        with urllib.request.urlopen(f"{serving['url']}/v1/models/tiny", timeout=30) as r:
            assert json.loads(r.read())["model_version_status"][0]["state"] == "AVAILABLE"
        host, port = serving["grpc"].rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=30).close()
        assert endpoint.interrupt() == 0, endpoint.lines
    finally:
        endpoint.kill()
    lines = endpoint.lines
    for line in lines:
        assert not TF_CPP.search(line), f"TensorFlow C++ log line on the console: {line}"
        assert not NOISE.search(line), f"warning or traceback on the console: {line}"
    # The log's path, one line per version loaded (in either order), the serving line.
    assert len(lines) == 2 + len(bases), lines
    log_path = LOG_LINE.match(lines[0])["path"]
    assert os.path.dirname(log_path) == str(tmp_path / "logs")
    loads = [LOAD_LINE.match(line) for line in lines[1:-1]]
    assert all(loads), lines
    assert sorted((m["name"], m["version"]) for m in loads) == [(n, "1") for n in sorted(bases)]
    assert serving["names"] == ", ".join(repr(n) for n in sorted(bases))
    assert lines[-1] == serving.group(0)

    with open(log_path) as f:
        log = f.read().splitlines()
    detail = [line for line in log if not line.startswith("[console] ")]
    assert any(TF_CPP.search(line) or "tensorflow" in line for line in detail), log[:20]
    # Whatever C++ lines TensorFlow prints when it starts on this machine (they
    # depend on the CPU; some print none) reach the log, not the console.
    for body in _tf_startup_lines():
        assert any(body in line for line in detail), body
    assert [line for line in log if line.startswith("[console] ")] == \
        [f"[console] {line}" for line in lines]


@pytest.mark.slow
def test_verbose_streams_the_log_and_stdout_holds_only_the_serving_line(bases, tmp_path):
    empty = tmp_path / "empty"      # a model folder nothing was pushed to yet
    empty.mkdir()
    endpoint = _Endpoint({"tiny": bases["tiny"], "empty": str(empty)}, tmp_path / "logs",
                         "--verbose", separate=True)
    try:
        serving = endpoint.wait_for(SERVING_LINE)
        assert endpoint.interrupt() == 0, endpoint.err_lines[-50:]
    finally:
        endpoint.kill()
    # Standard output: the serving line alone (benchmarks/serving.py reads its first line).
    assert endpoint.lines == [serving.group(0)] and serving["names"] == "'empty', 'tiny'"
    err_lines = endpoint.err_lines
    log_path = err_lines[0].split()[1]
    assert err_lines[0] == f"Log: {log_path}"
    loads = [i for i, line in enumerate(err_lines) if LOAD_LINE.match(line)]
    assert [LOAD_LINE.match(err_lines[i])["name"] for i in loads] == ["tiny"]
    # In the order written: the model's log line, then its console line.
    assert err_lines.index("INFO:root:model tiny: serving version 1") < loads[0]
    assert sum(re.match(rf"\d\d:\d\d:\d\d empty: no version under {re.escape(str(empty))} "
                        r"yet \(checked every 2 s\)$", line) is not None
               for line in err_lines) == 1, err_lines
    with open(log_path) as f:
        log = f.read()
    assert "INFO:root:model tiny: serving version 1" in log
    assert f"[console] {serving.group(0)}\n" in log


def _block_and_ignore_stop_signals():
    """What a parent can leave a child: SIGINT and SIGTERM blocked and ignored."""
    signal.pthread_sigmask(signal.SIG_BLOCK, server_cli.STOP_SIGNALS)
    for number in server_cli.STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_sigint_and_sigterm_stop_it_whatever_the_parent_left(bases, tmp_path, number):
    endpoint = _Endpoint({"tiny": bases["tiny"]}, tmp_path / "logs",
                         preexec_fn=_block_and_ignore_stop_signals)
    try:
        endpoint.wait_for(SERVING_LINE)
        assert endpoint.interrupt(number) == 0, endpoint.lines
    finally:
        endpoint.kill()


@pytest.mark.slow
def test_a_failed_start_names_the_reason_and_the_log(bases, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cmd = [sys.executable, "-m", "serving.server", "--rest-port", "0", "--grpc-port",
               str(taken.getsockname()[1]), "--log-dir", str(tmp_path),
               "--model", f"tiny={bases['tiny']}"]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and done.stdout == "", done
    lines = done.stderr.splitlines()
    log_path = LOG_LINE.match(lines[0])["path"]
    assert lines[1].startswith("FAILED to start: RuntimeError: Failed to bind to address")
    assert lines[2:] == [f"Full detail: {log_path}"]
    with open(log_path) as f:
        assert "Traceback (most recent call last)" in f.read()
