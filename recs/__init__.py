"""recstream backend package (contracts, KV stores, read path, CLI); development tooling in recs/local/.
See recs/README.md."""
