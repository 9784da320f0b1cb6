"""Beam workers free TF objects before exit: no AtomicFunction.__del__ tracebacks."""

import os
import subprocess
import sys
import textwrap

import pytest

from components import worker_exit

SCRIPT = textwrap.dedent("""\
    import sys, tempfile
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    def fn(inputs):
        import tensorflow_transform as tft
        return {"x": tft.compute_and_apply_vocabulary(inputs["s"])}

    meta = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
        {"s": tf.io.FixedLenFeature([], tf.string)}))
    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2", *sys.argv[1:]]
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
            rows = p | beam.Create([{"s": b"v%d" % (i % 7)} for i in range(500)])
            (out, _), _ = (rows, meta) | tft_beam.AnalyzeAndTransformDataset(fn)
            _ = out | beam.Map(lambda r: None)
    print("done")
    """)


def _teardown_tracebacks(tmp_path, *flags):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script), *flags], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
    return done.stderr.count("AtomicFunction.__del__")


@pytest.mark.slow
def test_workers_with_the_plugin_exit_without_tracebacks(tmp_path):
    # Without the plugin, the workers print the tracebacks as they exit ...
    assert _teardown_tracebacks(tmp_path) > 0
    # ... with it, the shared models are freed while TF is still loaded.
    assert _teardown_tracebacks(tmp_path, worker_exit.BEAM_PLUGIN_FLAG) == 0


def test_release_drops_the_shared_cache():
    from apache_beam.utils import shared

    class Model:
        pass

    handle = shared.Shared()
    model = handle.acquire(Model)
    assert worker_exit.release_shared_objects() >= 1
    del model
    assert len(shared._shared_map._cache_map) == 0      # noqa: SLF001


def test_a_process_without_beam_exits_cleanly():
    # The CLI imports the module (its flag is in the default Beam args); a
    # command that never loads Beam must not import it at exit.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", "import sys, components.worker_exit; "
                               "assert 'apache_beam' not in sys.modules"],
        env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
