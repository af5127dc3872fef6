"""gluon_arcface: the d2l "Training ArcFace" chapter as an MXNet Gluon package.

``import gluon_arcface as gaf`` switches MXNet to NumPy semantics (``npx.set_np()``), as the
chapter does, and exposes the chapter's helpers (get_faceresnet, ArcMarginBlock, TrainBlock,
TestBlock, ...).
"""
from mxnet import npx as _npx

_npx.set_np()

__version__ = '0.1.0'

from .margin import ArcMarginBlock, SoftmaxBlock, MARGIN_PRESETS  # noqa: E402
from .model import (BasicBlockV3, FaceResNet, get_faceresnet, TrainBlock, TestBlock,  # noqa: E402
                    faceresnet_spec)
