"""Models in and out: training checkpoints (``checkpoint``), exported MXNet models,
InsightFace checkpoints (``interop``), ONNX (``onnx_io``), backbones copied in for fine-tuning
(``pretrained``), named pretrained models (``model_zoo``), and ``resolve``: the one place
that turns what a user names as a model (run folder, prefix, ``PREFIX,EPOCH``, ``.onnx``, a
name) into a description every loader uses.

Imports only from ``runtime``, ``data`` and ``nn``.
"""
