"""JoinExamples: logs joined with the catalog."""
