"""gluon_arcface: the d2l "Training ArcFace" chapter as an MXNet Gluon package.

``import gluon_arcface as gaf`` exposes the chapter's helpers (get_faceresnet, ArcMarginBlock,
TrainBlock, TestBlock, read_facerec_meta, load_data_face_rec, train_ch_facerec, test_face_11,
...) and switches MXNet to NumPy semantics (``npx.set_np()``), as the chapter does.

Importing the package first applies the thread policy (:mod:`gluon_arcface.runtime.threads`: one
compute thread per physical core, unless ``OMP_NUM_THREADS`` says otherwise) and lets oneDNN
use AMX where the CPU has it, which must happen before MXNet loads; MXNet and the modules that
use it load at the first use of a name below, so that a script can still pass its ``--threads``
to ``gaf.configure_threads`` after parsing its arguments.

The code is in subpackages by stage, each importing only from those before it: ``runtime``
(errors, files, threads, devices, command lines), ``data`` (formats, datasets, the hub,
preparing photos, detection), ``nn`` (the networks and heads), ``models`` (checkpoints,
exports, InsightFace, ONNX, pretrained models, and the one resolver of what a user names as a
model), ``eval`` (verification, inference, plots) and ``train`` (settings, the training loop,
recipes, several devices and machines). docs/architecture.md lists every module with its job.
``gaf.<module>`` (e.g. ``gaf.recordio``) is each module under its short name.
"""
import importlib

from .runtime import threads as _threads

_threads.configure_threads()
_threads.enable_amx()  # oneDNN may use AMX for bfloat16 (before MXNet's first operation)

__version__ = '0.1.0'

# Public name -> the module defining it.
_EXPORTS = {
    'margin': ['ArcMarginBlock', 'SoftmaxBlock', 'MARGIN_PRESETS'],
    'model': ['BasicBlockV3', 'FaceResNet', 'PReLU', 'get_faceresnet', 'faceresnet_spec',
              'TrainBlock', 'TestBlock', 'inference_net'],
    'errors': ['GluonArcFaceError', 'FaceDataError', 'ImageDecodeError', 'UnsafePickleError',
               'DownloadError', 'ChecksumError', 'UnsafeArchiveError', 'CheckpointError',
               'ConfigError', 'TrainingDivergedError', 'UnknownDatasetError', 'DistributedError'],
    'recordio': ['RecordReader', 'RecordWriter', 'FaceRecWriter', 'build_index', 'scan_records',
                 'write_face_rec'],
    'binfile': ['load_bin', 'read_bin', 'write_bin'],
    'images': ['decode_image', 'resize_face'],
    'datasets': ['read_facerec_meta', 'write_property', 'open_face_dataset', 'dataset_people',
                 'FaceFolderDataset', 'FaceRecordDataset',
                 'FaceTrainTransform', 'FaceDataLoader', 'SkippedImage', 'load_data_face_rec',
                 'list_val_targets'],
    'hub': ['DATA_HUB', 'GENERATED', 'download', 'download_extract', 'get_data_home'],
    'align': ['ARCFACE_TEMPLATE', 'align_face', 'estimate_similarity'],
    'prepare': ['prepare_dataset', 'bin_from_pairs', 'sample_pairs'],
    'check': ['check_dataset', 'rebuild_index'],
    'embed': ['compute_embeddings', 'l2_normalize'],
    'verification': ['VerificationResult', 'test_face_11', 'verify',
                     'evaluate_embeddings', 'format_table', 'verify_pixels'],
    'checkpoint': ['save_checkpoint', 'load_checkpoint', 'latest_checkpoint'],
    'training': ['train_ch_facerec', 'lr_at_epoch', 'make_test_net', 'sync_aux_states',
                 'data_parallel_step'],
    'distributed': ['create_kvstore', 'create_trainer', 'WorkerGroup', 'DIST_KVSTORES'],
    'launcher': ['launch'],
    'parallel': ['FeatBlock', 'split_head', 'class_ranges', 'ModelParallelNet',
                 'ModelParallelTrainer', 'train_ch_facerec_parall', 'gather_head',
                 'scatter_head'],
    'inference': ['get_embedding', 'embed_images', 'embed_files', 'cosine_similarity',
                  'compare_faces', 'FaceEmbedder', 'embed_photos', 'compare_photos',
                  'verify_model'],
    'interop': ['export_embedding_net', 'load_embedding_net', 'faceresnet_from_insightface',
                'PixelRange'],
    'onnx_io': ['export_onnx', 'load_onnx', 'compare_onnx', 'OnnxEmbeddingNet'],
    'plotting': ['plot_history', 'plot_face_grid', 'plot_roc', 'plot_cmc', 'draw_faces'],
    'gallery': ['FaceGallery'],
    'identification': ['enrol', 'calibrate_threshold', 'identify_photo', 'identify_embeddings',
                       'evaluate_identification', 'IdentifiedFace', 'PhotoResult', 'Threshold'],
    'id_split': ['write_identification_check', 'write_dataset_variant'],
    'realigning': ['realign_dataset', 'realign_crop'],
    'model_zoo': ['get_pretrained', 'PRETRAINED_MODELS'],
    'resolve': ['ModelSource', 'resolve_model', 'load_face_model'],
    'pretrained': ['load_backbone', 'faceresnet_from_model'],
    'dlib_resnet': ['DlibResNet', 'load_dlib_resnet', 'export_dlib_onnx'],
    'dlib_dat': ['read_dat', 'DatError'],
    'detect': ['detect_faces', 'crop_landmarks', 'realign', 'align_photo', 'Face', 'find_face',
               'find_faces', 'crop_face', 'NoFaceError'],
    'threads': ['configure_threads', 'thread_info'],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
# The modules by stage (subpackage); gaf.<module> is gluon_arcface.<stage>.<module>.
_STAGES = {
    'runtime': ('cli', 'devices', 'errors', 'fileio', 'threads'),
    'data': ('align', 'augment', 'binfile', 'check', 'datasets', 'detect', 'hub', 'id_split',
             'images', 'pasted_faces', 'prepare', 'realigning', 'recordio', 'synthetic'),
    'nn': ('dlib_dat', 'dlib_resnet', 'embed', 'margin', 'model', 'precision'),
    'models': ('checkpoint', 'interop', 'model_zoo', 'onnx_io', 'pretrained', 'resolve'),
    'eval': ('gallery', 'gallery_bench', 'identification', 'inference', 'plotting',
             'verification'),
    'train': ('benchmark', 'config', 'distributed', 'launcher', 'parallel', 'recipe',
              'schedules', 'training'),
}
_MODULES = {module: stage for stage, modules in _STAGES.items() for module in modules}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        module = _WHERE[name]
        value = getattr(importlib.import_module('.%s.%s' % (_MODULES[module], module),
                                                __name__), name)
    elif name in _MODULES:
        value = importlib.import_module('.%s.%s' % (_MODULES[name], name), __name__)
    else:
        raise AttributeError('module %r has no attribute %r' % (__name__, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))
