"""vebus benchmarks: each scenario prints a table and writes JSON to loadtest/results/."""
