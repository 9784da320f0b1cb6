"""Kubeflow Pipelines v2 compilation: parses, lists every component, matches the golden file."""

import json
import os
import re

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components.trainer import hparams
from kubeflow import compile as kfp_compile
from kubeflow import presets
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
from transforms.spec import parse_spec

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "kubeflow_pipeline.json")
IMAGE = "europe-docker.pkg.dev/example/ssl4rec/pipeline:test"
ROOT = "gs://example-bucket/ssl4rec"
SPEC = {
    "name": "shop",
    "catalog": {"path": "gs://example-bucket/data/catalog", "id": "item_id",
                "features": ["category", {"name": "tags", "multivalued": True}]},
    "logs": {"path": "gs://example-bucket/data/logs", "pattern": "span-{SPAN}/*.csv",
             "query_item": "seed_item_id", "item": "item_id"},
}


def _config(**overrides):
    args = presets.beam_args("dataflow", project="example", region="europe-west4",
                             image=IMAGE, pipeline_root=ROOT)
    values = dict(spec=parse_spec(SPEC, "/"), run_root=ROOT, beam_pipeline_args=args,
                  hparams=hparams.from_dict({"strategy": "multi_worker_mirrored"}),
                  train_variants=("cfm",),
                  span_window=False)
    values.update(overrides)
    return PipelineConfig(**values)


def _normalized(job):
    text = json.dumps(job, sort_keys=True, indent=1)
    text = re.sub(r"\d+\.\d+\.\d+(\.dev\d+)?", "X.Y.Z", text)
    data = json.loads(text)
    data.pop("labels", None)
    data["pipelineSpec"].pop("sdkVersion", None)
    return data


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp") / "pipeline.json"
    return kfp_compile.compile_pipeline(_config(), IMAGE, str(out))


def test_job_parses_and_lists_every_local_component(job):
    parsed = json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob(),
                                   ignore_unknown_fields=False)
    spec = json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    local_ids = {c.id for c in create_pipeline(_config()).components}
    # KFP v2 compiles the latest-blessed-model resolver into two query tasks.
    resolver = "LatestBlessedModelResolver"
    expected = (local_ids - {resolver}) | {f"{resolver}-model-resolver",
                                           f"{resolver}-model-blessing-resolver"}
    assert set(spec.root.dag.tasks) == expected
    assert "Evaluator" in local_ids and resolver in local_ids
    assert parsed.display_name == "ssl4rec"
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        if "resolver" in executor:      # an ML Metadata query, no container
            continue
        container = executor["container"]
        assert container["image"] == IMAGE, name
    beam = [e for e in executors.values() if "--runner=DataflowRunner" in
            json.dumps(e.get("container", {}).get("args", []))]
    assert len(beam) >= 8          # ingest x2, statistics x2, join, Transform, correlation...
    assert "multi_worker_mirrored" in json.dumps(job)


def test_matches_golden_file(job):
    if os.environ.get("UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            json.dump(_normalized(job), f, sort_keys=True, indent=1)
            f.write("\n")
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert _normalized(job) == golden, (
        "the compiled pipeline changed; if intended, re-run with UPDATE_GOLDEN=1")


def test_not_importable_code_is_named_at_compile_time():
    pipeline = create_pipeline(_config())
    trainer = next(c for c in pipeline.components if c.id == "Trainer")
    trainer.exec_properties["run_fn"] = "components.trainer.missing.run_fn"
    with pytest.raises(kfp_compile.NotImportableError,
                       match=r"component Trainer: 'components.trainer.missing.run_fn'"):
        kfp_compile.check_importable(pipeline)


def test_presets_fill_fields_and_name_missing_ones():
    assert presets.beam_args("flink", job_endpoint="localhost:8099", image="img",
                             parallelism=2)[:2] == ("--runner=PortableRunner",
                                                     "--job_endpoint=localhost:8099")
    with pytest.raises(ValueError, match="needs --project"):
        presets.beam_args("dataflow", region="r", image="i", pipeline_root="gs://b")
    with pytest.raises(ValueError, match="beam preset must be one of"):
        presets.beam_args("mapreduce")


def test_remote_root_with_local_data_paths_is_refused(tmp_path, capsys):
    spec_path = tmp_path / "dataset.yaml"
    local = dict(SPEC, catalog=dict(SPEC["catalog"], path=str(tmp_path / "catalog")))
    spec_path.write_text(json.dumps(local))
    args = ["--dataset", str(spec_path), "--image", IMAGE, "--pipeline-root", ROOT,
            "--output", str(tmp_path / "job.json")]
    assert kfp_compile.main(args) == 2
    err = capsys.readouterr().err
    assert f"local path(s) ['{tmp_path / 'catalog'}']" in err and "--data-mounted" in err
    assert not (tmp_path / "job.json").exists()
    spec = parse_spec(local, "/")
    kfp_compile.check_data_paths(spec, ROOT, mounted=True)            # mounted: accepted
    kfp_compile.check_data_paths(spec, str(tmp_path / "root"), mounted=False)   # local root
    assert kfp_compile.local_data_paths(parse_spec(SPEC, "/")) == []
