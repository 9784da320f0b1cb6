"""Names of the served signatures, their inputs and outputs, written once.

The exports that build these signatures live with the step that writes them
(``components/trainer/export.py``, ``components/index/export.py``); the
Evaluator, the endpoint, the client and the tests read them by these names.
"""

from __future__ import annotations

SERVING_DEFAULT = "serving_default"

# The Trainer's export (query tower and item tower).
QUERY_EMBEDDING = "query_embedding"
ITEM_EMBEDDING = "item_embedding"
QUERY_EMBEDDING_EXAMPLES = "query_embedding_examples"
ITEM_EMBEDDING_EXAMPLES = "item_embedding_examples"
EMBEDDING = "embedding"                 # their output, float [N, D]
EXAMPLES = "examples"                   # input of every *_examples signature

# The retrieval exports (ScaNN and brute force).
RETRIEVE_EXAMPLES = "retrieve_examples"
KEEP_QUERY_ITEM = "keep_query_item"
RETRIEVE_EXAMPLES_KEEP_QUERY_ITEM = f"{RETRIEVE_EXAMPLES}_{KEEP_QUERY_ITEM}"
ITEM_IDS = "item_ids"                   # output, string [N, K], best first
SCORES = "scores"                       # output, float [N, K]

# The brute-force export's signature for TFMA.
EVALUATE = "evaluate"
CLASSES = "classes"                     # output, string [N, K]
