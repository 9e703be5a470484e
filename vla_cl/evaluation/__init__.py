"""Cross-task retention suites, sweeps, the forgetting-law fit and reports."""
