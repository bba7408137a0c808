"""Independently written replicas of U-Nets written by others, used to test that pruning works on networks
this project did not write (tests only; no dependency on those projects)."""
