"""Entry points: Flink jobs (user_embeddings, item_index, click_counts), the Spark job, replay."""
