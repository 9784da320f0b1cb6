"""``python -m serving`` starts the endpoint (same as ``python -m serving.server``)."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import sys  # noqa: E402

from serving.server import main  # noqa: E402

sys.exit(main())
