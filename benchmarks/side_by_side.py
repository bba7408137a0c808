"""Thin entry: ``python -m benchmarks.side_by_side TEACHER PRUNED --labels teacher pruned`` (reports/side_by_side.py)."""
from reports.side_by_side import main

if __name__ == "__main__":
    main()
