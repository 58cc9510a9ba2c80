"""Flink job entry points (click_counts today); see jobs/README.md."""
