"""ScaNN vs brute force, and the endpoint under load from separate processes.

Part 1 (one process): item embeddings with cluster structure (a mixture of
``--clusters`` Gaussians, D=64, L2-normalized) at each catalog size; queries
from the same mixture. Brute force = TF matmul + top_k over the whole matrix
(what the brute-force export runs); ScaNN = the project's IndexConfig
defaults through ScaNN's TF ops. Both answer the same query batches; recall@10
is ScaNN's top-10 against the exact top-10 (by score), QPS is queries per
second of wall time.

Part 2: the endpoint (``python -m serving.server``, its own process) serving
the exports pushed by the pipeline run under ``--run-root`` (MovieLens-1M by
default), loaded by ``python -m benchmarks.load`` (another process: keep-alive
HTTP/1.1 clients, one single-query REST request at a time each) at 1, 8 and
32 clients: p50 / p99 latency, requests/s, errors. The floor is the
signature's own time in process (``model_call_p50_ms``). The ScaNN export is
also measured with batching off (``max_batch_size`` 1). Last, a version swap
under load: version 2 (the brute-force export) is pushed into the served
folder while 32 clients run (for three times the per-level time, so the
new version is loaded within the load); every answer must be a 200 equal
to version 1's
(ScaNN: up to its batch-dependent approximation, see ``_same``) or version
2's (exact) answer for that request, computed in process.

Run from the repository root: ``python benchmarks/serving.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import scann  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from components.index import search  # noqa: E402
from serving import batching, codec  # noqa: E402
from serving import signatures as sig  # noqa: E402

DIM = 64
CLIENTS = (1, 8, 32)
EXPORTS = {"scann": "ssl4rec", "bruteforce": "ssl4rec_bruteforce"}


def _mixture(n: int, centers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(0, len(centers), n)
    return search.normalize(centers[picks] + 0.35 * rng.normal(size=(n, DIM)).astype(np.float32))


def _qps(fn, queries: np.ndarray, batch: int) -> tuple[float, list[np.ndarray]]:
    fn(queries[:batch])                                  # warm-up (tracing, caches)
    out, start = [], time.perf_counter()
    for i in range(0, len(queries), batch):
        out.append(fn(queries[i:i + batch]))
    return len(queries) / (time.perf_counter() - start), out


def index_case(n: int, n_queries: int, batch: int, clusters: int) -> dict[str, float]:
    rng = np.random.default_rng(n)
    centers = rng.normal(size=(clusters, DIM)).astype(np.float32)
    items, queries = _mixture(n, centers, rng), _mixture(n_queries, centers, rng)
    config = search.IndexConfig(k=10)
    start = time.perf_counter()
    searcher = search.build_scann(items, config)
    build_s = time.perf_counter() - start
    matrix = tf.constant(items)

    @tf.function(input_signature=[tf.TensorSpec([None, DIM], tf.float32)])
    def brute(q: tf.Tensor) -> tf.Tensor:
        return tf.math.top_k(tf.matmul(q, matrix, transpose_b=True), k=10).values

    def approx(q: np.ndarray) -> np.ndarray:
        return searcher.search_batched(q, final_num_neighbors=10)[1].numpy()

    brute_qps, exact = _qps(lambda q: brute(tf.constant(q)).numpy(), queries, batch)
    scann_qps, found = _qps(approx, queries, batch)
    recall = search.score_recall(np.concatenate(found), np.concatenate(exact))
    leaves, to_search = config.leaves(n)
    return {f"items_{n}_recall_at_10": round(recall, 4),
            f"items_{n}_bruteforce_qps": round(brute_qps),
            f"items_{n}_scann_qps": round(scann_qps),
            f"items_{n}_qps_ratio_scann_vs_bruteforce": round(scann_qps / brute_qps, 2),
            f"items_{n}_scann_build_s": round(build_s, 1),
            f"items_{n}_scann_leaves": leaves, f"items_{n}_scann_leaves_searched": to_search}


def _bodies(dataset: str, n: int) -> list[bytes]:
    from serving import query
    from transforms.spec import load_spec

    spec = load_spec(dataset)
    rows = query.catalog_rows(spec)
    return [json.dumps({"instances": [query.instance(spec, rows[i], {})]}).encode()
            for i in list(rows)[:n]]


def _latest(base: str) -> str:
    from serving.models import version_folders

    versions = version_folders(base)
    if not versions:
        raise SystemExit(f"no pushed version under {base}; run the pipeline first (make run)")
    return os.path.join(base, str(versions[-1]))


def _answers(path: str, bodies: list[bytes]) -> list[dict]:
    """Each body's answer from the SavedModel at ``path``, in process."""
    fn = tf.saved_model.load(path).signatures[sig.SERVING_DEFAULT]
    out = []
    for body in bodies:
        inputs, _ = codec.parse(json.loads(body), fn.structured_input_signature[1], 1)
        result = batching.run_signature(fn, inputs)
        out.append({sig.ITEM_IDS: result[sig.ITEM_IDS][0].astype(str).tolist(),
                    sig.SCORES: result[sig.SCORES][0]})
    return out


def model_call_ms(path: str, bodies: list[bytes], calls: int = 500) -> float:
    """p50 of one single-query signature call in process (arrays in, arrays out)."""
    fn = tf.saved_model.load(path).signatures[sig.SERVING_DEFAULT]
    specs = fn.structured_input_signature[1]
    inputs = [codec.parse(json.loads(b), specs, 1)[0] for b in bodies]
    for x in inputs[:20]:
        batching.run_signature(fn, x)
    times = []
    for i in range(calls):
        start = time.perf_counter()
        batching.run_signature(fn, inputs[i % len(inputs)])
        times.append(time.perf_counter() - start)
    return round(float(np.percentile(np.array(times) * 1000, 50)), 3)


class ServerProcess:
    """``python -m serving.server`` in its own process, on free ports."""

    def __init__(self, bases: dict[str, str], *flags: str) -> None:
        cmd = [sys.executable, "-m", "serving.server", "--rest-port", "0", "--grpc-port", "0",
               "--poll-seconds", "0.5", "--log-dir", os.path.join(ROOT, "runs", "logs"), *flags]
        for name, base in bases.items():
            cmd += ["--model", f"{name}={base}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if "REST http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = line.split("REST ")[1].split()[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(url: str, bodies_file: str, clients: int, seconds: float, warmup: float,
         record: str = "") -> dict:
    """Runs ``python -m benchmarks.load`` as its own process; returns its summary."""
    cmd = [sys.executable, "-m", "benchmarks.load", "--url", url, "--bodies", bodies_file,
           "--clients", str(clients), "--seconds", str(seconds), "--warmup", str(warmup)]
    if record:
        cmd += ["--record", record]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def endpoint_case(base: str, name: str, bodies_file: str, prefix: str, seconds: float,
                  *flags: str) -> dict[str, float]:
    server = ServerProcess({name: base}, *flags)
    url = f"{server.url}/v1/models/{name}:predict"
    values: dict[str, float] = {}
    try:
        for clients in CLIENTS:
            got = load(url, bodies_file, clients, seconds, warmup=2.0)
            key = f"{prefix}endpoint_clients_{clients}"
            values.update({f"{key}_p50_ms": got["p50_ms"], f"{key}_p99_ms": got["p99_ms"],
                           f"{key}_requests_per_s": got["requests_per_s"],
                           f"{key}_errors": got["errors"], f"{key}_requests": got["requests"]})
    finally:
        server.stop()
    return values


def _same(answer: dict, expected: dict, exact: bool) -> bool:
    """Whether ``answer`` is the ``expected`` top-K (``exact``) or ScaNN's near-equal one.

    ScaNN's answer to a query can change slightly with the batch it runs in
    (a candidate or two near the cut-off); so an approximate answer must
    share 95% of its ids with the expected one, with equal scores for them.
    """
    ids, want = answer[sig.ITEM_IDS], expected[sig.ITEM_IDS]
    if exact or ids == want:
        return ids == want and np.allclose(answer[sig.SCORES], expected[sig.SCORES], rtol=1e-4,
                                           atol=1e-5)
    scores = dict(zip(want, expected[sig.SCORES]))
    shared = [(s, scores[i]) for i, s in zip(ids, answer[sig.SCORES]) if i in scores]
    return len(ids) == len(want) and len(shared) >= 0.95 * len(want) and np.allclose(
        *zip(*shared), rtol=1e-4, atol=1e-5)


def _served_version(url: str) -> int:
    with urllib.request.urlopen(f"{url}/v1/models/ssl4rec", timeout=10) as r:
        return int(json.loads(r.read())["model_version_status"][0]["version"])


def swap_case(scann_base: str, brute_base: str, bodies: list[bytes], bodies_file: str,
              seconds: float) -> dict[str, float]:
    """Pushes version 2 while 32 clients run; checks every answer against v1 / v2."""
    work = tempfile.mkdtemp()
    base = os.path.join(work, "ssl4rec")
    shutil.copytree(_latest(scann_base), os.path.join(base, "1"))
    record = os.path.join(work, "answers.jsonl")
    server = ServerProcess({"ssl4rec": base})
    try:
        client = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.load", "--url",
             f"{server.url}/v1/models/ssl4rec:predict", "--bodies", bodies_file,
             "--clients", "32", "--seconds", str(3 * seconds), "--warmup", "1",
             "--record", record], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(1 + seconds / 2)
        shutil.copytree(_latest(brute_base), os.path.join(work, "incoming"))
        os.rename(os.path.join(work, "incoming"), os.path.join(base, "2"))
        pushed = time.perf_counter()
        while _served_version(server.url) != 2 and client.poll() is None:
            time.sleep(0.1)
        swapped_s = time.perf_counter() - pushed if _served_version(server.url) == 2 else -1
        summary = json.loads(client.communicate()[0].strip().splitlines()[-1])
    finally:
        server.stop()
    expected = {1: _answers(os.path.join(base, "1"), bodies),
                2: _answers(os.path.join(base, "2"), bodies)}
    counts = {"version_1_only": 0, "version_2_only": 0, "both": 0, "neither": 0}
    with open(record) as f:
        for line in f:
            row = json.loads(line)
            if row["status"] != 200:
                continue
            answer = row["answer"]["predictions"][0]
            match = [_same(answer, expected[v][row["body"]], exact=v == 2) for v in (1, 2)]
            counts[{(True, False): "version_1_only", (False, True): "version_2_only",
                    (True, True): "both", (False, False): "neither"}[tuple(match)]] += 1
    shutil.rmtree(work)
    return {"endpoint_swap_errors": summary["errors"],
            "endpoint_swap_seconds_from_push_to_served": round(swapped_s, 2),
            "endpoint_swap_requests": summary["requests"],
            **{f"endpoint_swap_answers_{k}": v for k, v in counts.items()}}


def endpoints(run_root: str, dataset: str, seconds: float) -> dict[str, object]:
    bases = {k: os.path.join(run_root, "serving", name) for k, name in EXPORTS.items()}
    bodies = _bodies(dataset, 200)
    bodies_file = os.path.join(tempfile.mkdtemp(), "bodies.jsonl")
    with open(bodies_file, "wb") as f:
        f.write(b"\n".join(bodies) + b"\n")
    values: dict[str, object] = {"endpoint_bodies": len(bodies), "endpoint_seconds": seconds,
                                 "machine_load_avg_1m_before": round(os.getloadavg()[0], 2)}
    for key, name in EXPORTS.items():
        prefix = "" if key == "scann" else f"{key}_"
        values[f"{prefix}model_call_p50_ms"] = model_call_ms(_latest(bases[key]), bodies)
        values.update(endpoint_case(bases[key], name, bodies_file, prefix, seconds))
    values.update(endpoint_case(bases["scann"], "ssl4rec", bodies_file, "nobatch_", seconds,
                                "--max-batch-size", "1"))
    values.update(swap_case(bases["scann"], bases["bruteforce"], bodies, bodies_file, seconds))
    values["machine_load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return values


def _endpoint_lines(values: dict[str, object]) -> list[str]:
    lines = ["", "## Endpoint under load (client and server in separate processes)", "",
             f"Exports of the pipeline run under `{values['run_root']}`; "
             f"{values['endpoint_bodies']} single-query REST bodies (catalog items), "
             f"{values['endpoint_seconds']} s per level after 2 s of warm-up, keep-alive "
             "HTTP/1.1 clients (`python -m benchmarks.load`). Machine load (1-minute average, "
             f"other jobs included): {values['machine_load_avg_1m_before']} before, "
             f"{values['machine_load_avg_1m_after']} after the endpoint runs.", "",
             "| export | clients | p50 ms | p99 ms | requests/s | errors | call p50 ms |",
             "|---|---|---|---|---|---|---|"]
    for label, prefix, floor in [("ScaNN", "", "model_call_p50_ms"),
                                 ("brute force", "bruteforce_", "bruteforce_model_call_p50_ms"),
                                 ("ScaNN, batching off", "nobatch_", "model_call_p50_ms")]:
        for n in CLIENTS:
            key = f"{prefix}endpoint_clients_{n}"
            lines.append(f"| {label} | {n} | {values[f'{key}_p50_ms']} | {values[f'{key}_p99_ms']}"
                         f" | {values[f'{key}_requests_per_s']} | {values[f'{key}_errors']} | "
                         f"{values[floor]} |")
    swapped = values["endpoint_swap_seconds_from_push_to_served"]
    when = (f"served {swapped} s after the push (load, warm-up, swap), while the load ran"
            if swapped >= 0 else "NOT served before the load ended")
    lines += ["", f"Version swap under 32 clients: version 2 pushed (atomic rename), {when}; "
              f"{values['endpoint_swap_requests']} requests, "
              f"{values['endpoint_swap_errors']} errors; answers equal to version 1's only: "
              f"{values['endpoint_swap_answers_version_1_only']}, to version 2's only: "
              f"{values['endpoint_swap_answers_version_2_only']}, to both (same top-K): "
              f"{values['endpoint_swap_answers_both']}, to neither: "
              f"{values['endpoint_swap_answers_neither']}.", "",
              "Goals on 2 cores: p99 <= 20 ms at 32 clients, >= 1,500 requests/s at 8 clients, "
              "0 errors. The machine load above says how idle the CPUs were (these "
              "machines are shared); rerun with the single command "
              f"`{values['command']}` (after `make run`)."]
    return lines


def _markdown(values: dict[str, object], sizes: list[int]) -> str:
    lines = ["# Serving: ScaNN vs brute force, and the endpoint under load", "",
             f"Command: `{values['command']}`; {values['machine_cpus']} CPUs."]
    if sizes:
        lines += ["", f"Clustered synthetic embeddings (D={DIM}), {values['queries']} queries in "
                  f"batches of {values['query_batch']}, both methods in the same process.", "",
                  "| items | recall@10 | brute-force q/s | ScaNN q/s | ratio | leaves searched |",
                  "|---|---|---|---|---|---|"]
    for n in sizes:
        lines.append(
            f"| {n} | {values[f'items_{n}_recall_at_10']} | {values[f'items_{n}_bruteforce_qps']}"
            f" | {values[f'items_{n}_scann_qps']} | "
            f"{values[f'items_{n}_qps_ratio_scann_vs_bruteforce']} | "
            f"{values[f'items_{n}_scann_leaves_searched']}/{values[f'items_{n}_scann_leaves']} |")
    if "endpoint_clients_1_p50_ms" in values:
        lines += _endpoint_lines(values)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000", help="'' skips part 1")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--run-root", default="runs/movielens-1m")
    parser.add_argument("--dataset", default="data/movielens-1m/dataset.yaml")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load level")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    values: dict[str, object] = {"queries": args.queries, "query_batch": args.batch,
                                 "run_root": args.run_root}
    for n in sizes:
        values.update(index_case(n, args.queries, args.batch, args.clusters))
    values.update(endpoints(args.run_root, args.dataset, args.seconds))
    write_results("serving", values, lambda v: _markdown(v, sizes))


if __name__ == "__main__":
    main()
