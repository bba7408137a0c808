"""Thin entry: ``python -m benchmarks.compare_runs runs/`` (see reports/compare.py)."""
from reports.compare import main

if __name__ == "__main__":
    main()
