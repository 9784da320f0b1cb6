"""create_pipeline, configuration, runners and the command line."""
