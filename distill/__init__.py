"""distill: knowledge distillation of BERT-family text classifiers into small, fast ONNX students."""

__version__ = "0.1.0"
