"""JoinExamples: logs joined with the catalog."""

#: Catalogs of at most this many rows are joined as an in-memory side input.
DEFAULT_SIDE_INPUT_MAX_ITEMS = 2_000_000
