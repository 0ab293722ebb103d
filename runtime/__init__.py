"""Everything that imports onnxruntime lives here, and is imported lazily by callers.

Graph passes (onnx_flipout.passes) never import this package, so they never pay for torch or the training build.
"""
