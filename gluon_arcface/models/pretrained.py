"""Backbones from elsewhere, for fine-tuning: a run folder, a checkpoint or an exported model.

:func:`load_backbone` copies every parameter of a FaceResNet (convolutions, BatchNorm weights
and running statistics, PReLU slopes, the embedding layer) from a trained model into the
backbone of a network about to be trained; the margin head is left as it is (a new head for new
identities). Parameters are matched by name and checked by shape, so a model of another depth,
embedding size or input size is refused with both shapes named.

Sources (:func:`find_backbone_file`, through :func:`~gluon_arcface.models.resolve.resolve_model`):

* a run folder of ``scripts/train.py`` (``checkpoints/best.params``, else the latest epoch's
  checkpoint, else the exported ``model/``);
* a checkpoint ``.params`` saved by a TrainBlock, TestBlock, FeatBlock or FaceResNet
  (structural names such as ``feat_net.0.features.0.weight``);
* an exported model: ``PREFIX`` / ``PREFIX-symbol.json`` / ``PREFIX-0000.params`` as written by
  ``export_embedding_net`` (``arg:``/``aux:`` names like ``testblock0_faceresnet0_conv0_weight``);
* an InsightFace MXNet checkpoint of an IR ResNet (``fresnet.py`` names, ``PREFIX``), mapped by
  ``interop.faceresnet_from_insightface``; the network then needs InsightFace's input
  normalisation (``backbone_input_norm`` says which, ``scripts/train.py`` applies it).
"""
import re

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import npx

from ..nn.model import FaceResNet, backbone_of, faceresnet_spec
from ..runtime.devices import as_contexts
from ..runtime.errors import CheckpointError
from .interop import faceresnet_from_insightface
from .resolve import ModelSource, refuse_range_255, resolve_model

__all__ = ['find_backbone_file', 'backbone_input_norm', 'load_backbone',
           'faceresnet_from_model']

_DENSE = re.compile(r'^output\.\d+\.(weight|bias)$')  # the embedding layer (index moves with
_PREFIX = re.compile(r'^.*?faceresnet\d+_')            # the optional Dropout)


def _resolved(source):
    return source if isinstance(source, ModelSource) else resolve_model(source)


def find_backbone_file(source):
    """``(params file, kind)`` of the weights a backbone is copied from: kind is
    ``'structural'`` (a checkpoint; a run folder's best or latest one first), ``'exported'``
    (``export_embedding_net``'s layout) or ``'insightface'``; ``source`` as
    :func:`~gluon_arcface.models.resolve.resolve_model` takes it (``PREFIX,EPOCH`` too), or a
    :class:`~gluon_arcface.models.resolve.ModelSource`. CheckpointError when nothing fits or
    the source holds no FaceResNet weights."""
    src = _resolved(source)
    if src.checkpoint:
        return src.checkpoint, 'structural'
    if src.kind in ('exported', 'insightface'):
        return src.path, src.kind
    raise CheckpointError('%s: a %s model; a backbone is copied from a run folder, a .params '
                          'checkpoint, an exported model or an InsightFace checkpoint'
                          % (source, src.kind))


def backbone_input_norm(source):
    """The ``input_norm`` (mean, scale) a backbone from ``source`` needs (None: the package's
    plain [0, 1] input): InsightFace's normalisation for its checkpoints, else what the run's
    config.json or the export's model.json recorded."""
    return _resolved(source).input_norm


def _backbone(net):
    backbone = backbone_of(net)
    if backbone is not None:
        return backbone
    raise TypeError('load_backbone takes a network with a FaceResNet backbone (TrainBlock, '
                    'TestBlock, FeatBlock, FaceResNet), got %s' % type(net).__name__)


def _structural_key(name):
    name = name[len('feat_net.0.'):] if name.startswith('feat_net.0.') else name
    return _DENSE.sub(r'output.dense.\1', name)


def _shape_text(shape):
    return '(%s)' % ', '.join('?' if d <= 0 else str(d) for d in shape)


def load_backbone(net, source, ctx=None):
    """Copy a trained FaceResNet's parameters from ``source`` into ``net``'s backbone.

    ``net``: a TrainBlock, FeatBlock, TestBlock or FaceResNet (its head, if any, is not
    touched). ``source``: a run folder, a checkpoint or an exported model (module notes), or
    its :class:`~gluon_arcface.models.resolve.ModelSource`. Returns the file read. Raises
    CheckpointError when the file is not such a model, or when a parameter is missing or has
    another shape (naming both shapes).
    """
    src = _resolved(source)
    path, kind = find_backbone_file(src)
    backbone = _backbone(net)
    if kind == 'insightface':  # mapped into a FaceResNet first, then copied like a checkpoint
        stem, epoch = re.match(r'^(.*)-(\d{4})\.params$', path).groups()
        mapped, _ = faceresnet_from_insightface(stem, int(epoch))
        arrays = {n: p.data() for n, p in mapped._collect_params_with_prefix().items()}
        kind, source_norm = 'structural', mapped.input_norm
    else:
        try:
            arrays = npx.load(path)
        except Exception as e:  # noqa: BLE001 - MXNet reports unreadable files variously
            raise CheckpointError('%s is unreadable (truncated or not an MXNet parameter file): '
                                  '%s' % (path, str(e).splitlines()[0][:200])) from None
        source_norm = src.input_norm
    if tuple(source_norm or ()) != tuple(backbone.input_norm or ()):
        raise CheckpointError('%s was trained on inputs normalised as (x - mean) * scale with '
                              '(mean, scale) = %s; this network uses %s: build it with '
                              'input_norm=%s' % (path, source_norm, backbone.input_norm,
                                                 source_norm))
    targets = backbone._collect_params_with_prefix()
    if kind == 'exported':
        by_key = {_PREFIX.sub('', p.name): p for p in targets.values()}
        source_keys = {_PREFIX.sub('', k.split(':', 1)[-1]): k for k in arrays}
    else:
        by_key = {_structural_key(n): p for n, p in targets.items()}
        source_keys = {_structural_key(k): k for k in arrays
                       if not k.startswith('margin_block.')}
    missing = sorted(set(by_key) - set(source_keys))
    extra = sorted(set(source_keys) - set(by_key))
    if missing or extra:
        raise CheckpointError(
            '%s does not hold this backbone (FaceResNet with %d parameters): %s%s. Is it a '
            'FaceResNet of another depth?' % (
                path, len(by_key), ('missing %s' % ', '.join(missing[:3])) if missing else '',
                ('%sunexpected %s' % ('; ' if missing else '', ', '.join(extra[:3])))
                if extra else ''))
    for key, param in by_key.items():
        array = arrays[source_keys[key]]
        want = param.shape
        if len(want) != array.ndim or any(w > 0 and w != g for w, g in zip(want, array.shape)):
            raise CheckpointError(
                '%s: parameter %s has shape %s, this network needs %s (another embedding size '
                '(--emb-size) or input size (--image-size)?)'
                % (path, source_keys[key], _shape_text(array.shape), _shape_text(want)))
    for key, param in by_key.items():
        param._load_init(arrays[source_keys[key]].astype(param.dtype), ctx)
    return path


def faceresnet_from_model(spec, ctx=None, input_range=None):
    """A trainable network holding a trained model -> ``(net, image_size)``: a FaceResNet from
    a run folder, checkpoint or exported model of this package (model.json or the run's
    settings give depth, embedding size, input size and normalisation) or from an InsightFace
    IR-ResNet checkpoint (``PREFIX`` or ``PREFIX,EPOCH``); a named pretrained model, or a model
    fine-tuned from one, as its own block. What :func:`export_onnx` and fine-tuning take.
    ``input_range`` (1 or 255): the pixels an InsightFace checkpoint's graph takes, overriding
    :func:`input_range_of`; the package's own models take [0, 1], so 255 is an error for them.
    """
    from . import model_zoo
    src = resolve_model(spec, input_range=input_range)
    if src.kind == 'named':
        return model_zoo.get_pretrained(src.spec, ctx), src.image_size
    if src.kind == 'insightface':
        net, _ = faceresnet_from_insightface(src.prefix, src.epoch, ctx,
                                             input_range=input_range)
        return net, src.image_size
    if src.kind not in ('exported', 'checkpoint'):
        raise CheckpointError('%s: a %s model cannot be rebuilt as a trainable network'
                              % (spec, src.kind))
    refuse_range_255(src.path, input_range)
    info = src.info
    if src.backbone:  # fine-tuned from a named model
        from ..nn.dlib_resnet import dlib_resnet_from_file
        return dlib_resnet_from_file(src.path, src.backbone, ctx), \
            tuple(src.image_size or src.backbone['input_size'])
    if not {'num_layers', 'emb_size', 'image_size'} <= set(info):
        raise CheckpointError('%s: model.json with num_layers, emb_size and image_size is '
                              'needed beside the model to rebuild it' % src.path)
    net = FaceResNet(faceresnet_spec(info['num_layers']), info['emb_size'],
                     input_norm=info.get('input_norm'))
    net.initialize(ctx=as_contexts(ctx)[0])
    load_backbone(net, src.path)
    return net, tuple(info['image_size'])
