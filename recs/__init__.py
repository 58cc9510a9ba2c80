"""recstream shared package: event contracts, the local stack, data generators, KV stores."""
