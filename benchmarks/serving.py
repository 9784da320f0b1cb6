"""ScaNN vs brute force, and the endpoint under a bounded loopback load.

Part 1 (one process): item embeddings with cluster structure (a mixture of
``--clusters`` Gaussians, D=64, L2-normalized) at each catalog size; queries
from the same mixture. Brute force = TF matmul + top_k over the whole matrix
(what the brute-force export runs); ScaNN = the project's IndexConfig
defaults through ScaNN's TF ops. Both answer the same query batches; recall@10
is ScaNN's top-10 against the exact top-10 (by score), QPS is queries per
second of wall time.

Part 2: the endpoint (REST) serving the MovieLens-1M ScaNN export pushed by
``make run``, with ``--clients`` concurrent clients each sending
``--requests`` single-query requests; latency percentiles, throughput, errors.

Run from the repository root: ``python benchmarks/serving.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import scann  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from components.index import search  # noqa: E402

DIM = 64


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


def endpoint_case(serving_dir: str, dataset: str, clients: int, requests: int
                  ) -> dict[str, float]:
    from serving import query
    from serving.server import Server
    from transforms.spec import load_spec

    spec = load_spec(dataset)
    rows = query.catalog_rows(spec)
    bodies = [json.dumps({"instances": [query.instance(spec, rows[i], {})]}).encode()
              for i in list(rows)[:200]]
    server = Server({"ssl4rec": serving_dir}, rest_port=0, grpc_port=0).start()
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/ssl4rec:predict"
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(seed: int) -> None:
        for r in range(requests):
            body = bodies[(seed * requests + r) % len(bodies)]
            start = time.perf_counter()
            try:
                req = urllib.request.Request(url, data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as response:
                    response.read()
                    ok = response.status == 200
            except OSError:
                ok = False
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += 0 if ok else 1

    for i in range(5):
        urllib.request.urlopen(urllib.request.Request(
            url, data=bodies[i], headers={"Content-Type": "application/json"})).read()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server.stop()
    ms = np.array(latencies) * 1000
    return {"endpoint_clients": clients, "endpoint_requests": len(latencies),
            "endpoint_errors": errors[0], "endpoint_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "endpoint_p99_ms": round(float(np.percentile(ms, 99)), 2),
            "endpoint_requests_per_s": round(len(latencies) / wall, 1)}


def _markdown(values: dict[str, object], sizes: list[int]) -> str:
    lines = ["# Serving: ScaNN vs brute force, and the endpoint under load", "",
             f"Command: `{values['command']}`; {values['machine_cpus']} CPUs. Clustered "
             f"synthetic embeddings (D={DIM}), {values['queries']} queries in batches of "
             f"{values['query_batch']}, both methods in the same process.", "",
             "| items | recall@10 | brute-force q/s | ScaNN q/s | ratio | leaves searched |",
             "|---|---|---|---|---|---|"]
    for n in sizes:
        lines.append(
            f"| {n} | {values[f'items_{n}_recall_at_10']} | {values[f'items_{n}_bruteforce_qps']}"
            f" | {values[f'items_{n}_scann_qps']} | "
            f"{values[f'items_{n}_qps_ratio_scann_vs_bruteforce']} | "
            f"{values[f'items_{n}_scann_leaves_searched']}/{values[f'items_{n}_scann_leaves']} |")
    if "endpoint_p50_ms" in values:
        lines += ["", f"Endpoint (REST, MovieLens-1M ScaNN export, {values['endpoint_clients']} "
                  f"concurrent loopback clients, {values['endpoint_requests']} requests): "
                  f"p50 {values['endpoint_p50_ms']} ms, p99 {values['endpoint_p99_ms']} ms, "
                  f"{values['endpoint_requests_per_s']} requests/s, "
                  f"{values['endpoint_errors']} errors."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--serving-dir", default="runs/movielens-1m/serving/ssl4rec")
    parser.add_argument("--dataset", default="data/movielens-1m/dataset.yaml")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    values: dict[str, object] = {"queries": args.queries, "query_batch": args.batch}
    for n in sizes:
        values.update(index_case(n, args.queries, args.batch, args.clusters))
    if os.path.isdir(args.serving_dir):
        values.update(endpoint_case(args.serving_dir, args.dataset, args.clients, args.requests))
    write_results("serving", values, lambda v: _markdown(v, sizes))


if __name__ == "__main__":
    main()
