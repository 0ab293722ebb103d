"""onnx-flipout: prune (FlipOut), fine-tune and quantize ONNX models directly, without their source framework."""

__version__ = "0.1.0"
