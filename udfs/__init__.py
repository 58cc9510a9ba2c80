"""Flink functions: parsing/validation, keyed click counts, the Redis sink; see udfs/README.md."""
