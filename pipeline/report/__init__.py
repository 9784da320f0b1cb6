"""What a run tells its user: console, progress lines, run summary, results page.

Reads ML Metadata and the artefacts; runs nothing of the pipeline.
"""
