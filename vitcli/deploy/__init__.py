"""Deployment: prediction through PyTorch or onnxruntime, and the verified ONNX export
(graph rewrites, numeric checks).
"""
