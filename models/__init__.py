"""Two-tower model: tokenizer, towers, training, evaluation, ONNX export, artifact metadata."""
