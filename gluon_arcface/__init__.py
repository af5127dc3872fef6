"""gluon_arcface: the d2l "Training ArcFace" chapter as an MXNet Gluon package.

``import gluon_arcface as gaf`` switches MXNet to NumPy semantics (``npx.set_np()``), as the
chapter does, and exposes the chapter's helpers (get_faceresnet, ArcMarginBlock, TrainBlock,
TestBlock, read_facerec_meta, load_data_face_rec, train_ch_facerec, test_face_11, ...).

Modules: model / margin (blocks), recordio / binfile / datasets (data formats and datasets),
hub (downloads), synthetic (the offline dataset), prepare / align (dataset tools), training /
checkpoint (training), distributed / parallel (scaling out), verification, inference,
plotting, recipe (what scripts/train.py runs), benchmark (scripts/benchmark.py).
"""
from mxnet import npx as _npx

_npx.set_np()

__version__ = '0.1.0'

from .margin import ArcMarginBlock, SoftmaxBlock, MARGIN_PRESETS
from .model import (BasicBlockV3, FaceResNet, PReLU, get_faceresnet, faceresnet_spec, TrainBlock,
                    TestBlock, inference_net)
from .errors import (GluonArcFaceError, FaceDataError, ImageDecodeError, UnsafePickleError,
                     DownloadError, ChecksumError, UnsafeArchiveError, CheckpointError,
                     ConfigError, TrainingDivergedError)
from .recordio import (RecordReader, RecordWriter, FaceRecWriter, build_index, scan_records,
                       write_face_rec)
from .binfile import load_bin, read_bin, write_bin, decode_image
from .datasets import (read_facerec_meta, write_property, FaceFolderDataset, FaceRecordDataset,
                       FaceTrainTransform, FaceDataLoader, SkippedImage, load_data_face_rec,
                       list_val_targets)
from .hub import DATA_HUB, GENERATED, download, download_extract, get_data_home
from .align import ARCFACE_TEMPLATE, align_face, estimate_similarity
from .prepare import prepare_dataset, bin_from_pairs, sample_pairs, check_dataset
from .verification import (VerificationResult, compute_embeddings, test_face_11, verify,
                           evaluate_embeddings, plot_roc, format_table)
from .checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint
from .training import (train_ch_facerec, lr_at_epoch, make_test_net, sync_aux_states,
                       data_parallel_step)
from .distributed import (create_kvstore, create_trainer, WorkerGroup, launch, DistributedError,
                          DIST_KVSTORES)
from .parallel import (FeatBlock, split_head, class_ranges, ModelParallelNet, ModelParallelTrainer,
                       train_ch_facerec_parall, gather_head, scatter_head)
from .inference import (get_embedding, embed_images, embed_files, cosine_similarity,
                        compare_faces, export_embedding_net, load_embedding_net, FaceEmbedder)
from .plotting import plot_history, plot_face_grid
