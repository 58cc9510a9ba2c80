"""The ANN index service: FAISS index, gRPC server and client, item_embeddings feeder; see index/README.md."""
