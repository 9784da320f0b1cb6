"""Pipeline steps with project code: ingest, join, correlation."""
