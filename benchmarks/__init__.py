"""Measurements and studies behind docs/RESULTS.md and docs/PERFORMANCE.md; run each as
``python -m benchmarks.NAME --help`` from the repository root (or anywhere after ``pip install -e .``)."""
