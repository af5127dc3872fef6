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
from .errors import (GluonArcFaceError, FaceDataError, UnsafePickleError, DownloadError,  # noqa: E402
                     ChecksumError, UnsafeArchiveError, CheckpointError, TrainingDivergedError)
from .recordio import RecordReader, RecordWriter, build_index, write_face_rec  # noqa: E402
from .binfile import load_bin, read_bin, write_bin, decode_image  # noqa: E402
from .datasets import (read_facerec_meta, write_property, FaceFolderDataset,  # noqa: E402
                       FaceRecordDataset, FaceTrainTransform, load_data_face_rec,
                       list_val_targets)
