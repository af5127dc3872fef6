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
from .hub import DATA_HUB, GENERATED, download, download_extract, get_data_home  # noqa: E402
from .verification import (VerificationResult, compute_embeddings, test_face_11,  # noqa: E402
                           verify, evaluate_embeddings, plot_roc, format_table)
from .checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint  # noqa: E402
from .training import train_ch_facerec, lr_at_epoch, make_test_net  # noqa: E402
from .inference import (get_embedding, embed_images, embed_files, cosine_similarity,  # noqa: E402
                        compare_faces, export_embedding_net, load_embedding_net, FaceEmbedder)
