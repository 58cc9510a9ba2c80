"""Development tooling, not shipped to a backend: the local stack, the demo, data generators, the
producer, Flink job submission and the poison-record corpus. See recs/README.md."""
