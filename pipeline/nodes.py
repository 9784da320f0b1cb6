"""Node ids of the pipeline, written once.

``create_pipeline`` gives its components these ids; the run summary, the
benchmarks and the tests look runs up in ML Metadata by them.
"""

from __future__ import annotations

LOGS_EXAMPLE_GEN = "LogsExampleGen"
CATALOG_EXAMPLE_GEN = "CatalogExampleGen"
LOG_SPAN_WINDOW = "LogSpanWindow"
JOIN = "JoinExamples"
TRANSFORM = "Transform"
CORRELATION = "FeatureCorrelation"
INDEX = "IndexBuilder"
BLESSED_MODEL_RESOLVER = "LatestBlessedModelResolver"
EVALUATOR = "Evaluator"


def trainer(variant: str, first: bool) -> str:
    """The first configured variant's Trainer is ``Trainer``; the others ``Trainer_<variant>``."""
    return "Trainer" if first else f"Trainer_{variant}"


def pusher(served_name: str) -> str:
    """The Pusher of the export served as ``served_name``."""
    return f"Pusher_{served_name}"


def checks(table: str) -> tuple[str, str, str]:
    """StatisticsGen, SchemaGen and ExampleValidator ids of a table (``Logs``, ``Catalog``)."""
    return f"{table}StatisticsGen", f"{table}SchemaGen", f"{table}ExampleValidator"
