"""Flink functions: parsing/validation, keyed state logic, async ONNX towers, sinks."""
