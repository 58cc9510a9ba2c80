"""FAISS index wrapper, gRPC index server and client, item_embeddings feeder."""
