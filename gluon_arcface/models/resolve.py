"""The one model resolver: what a user names as a model -> a :class:`ModelSource`.

A model may be named (``--model`` of verify.py and export.py, ``--pretrained`` of train.py,
``FaceEmbedder.load``, ``load_face_model``) as

* a run folder of ``scripts/train.py``: its exported ``model/`` (what inference runs) and its
  best (else latest) checkpoint in ``checkpoints/`` (what fine-tuning copies);
* an exported model or an InsightFace MXNet checkpoint: ``PREFIX``, ``PREFIX-symbol.json``,
  ``PREFIX-0000.params`` or InsightFace's ``PREFIX,EPOCH`` (the newest epoch if none is said);
* a checkpoint ``.params`` of a TrainBlock / TestBlock / FaceResNet (structural names);
* an ``.onnx`` file;
* a named pretrained model (``model_zoo.PRETRAINED_MODELS``), or ``NAME@dlib`` for the same
  weights run by dlib itself.

:func:`resolve_model` reads only small files (model.json, a run's config.json, the symbol's
head); :func:`load_face_model` loads the network for inference.
"""
import dataclasses
import glob
import json
import os
import re

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import autograd
from mxnet import numpy as mnp

from ..runtime.devices import as_contexts
from ..runtime.errors import CheckpointError, ConfigError
from . import model_zoo
from .checkpoint import latest_checkpoint
from .interop import (INSIGHTFACE_INPUT_NORM, check_input_range, input_range_of, load_embedding_net,
                      model_image_size, read_model_info)
from .onnx_io import load_onnx

__all__ = ['ModelSource', 'KINDS', 'resolve_model', 'load_face_model', 'refuse_range_255']

#: What a :class:`ModelSource` can be.
KINDS = ('named', 'dlib-reference', 'onnx', 'exported', 'insightface', 'checkpoint')
_EPOCH_PARAMS = re.compile(r'^(.*)-(\d{4})\.params$')


@dataclasses.dataclass
class ModelSource:
    """A resolved model name.

    ``kind`` (one of :data:`KINDS`); ``path``: the weights file (``.params``, ``.onnx``, or the
    named model's ``.dat``); ``prefix`` and ``epoch``: of an exported model or InsightFace
    checkpoint (``PREFIX-symbol.json``, ``PREFIX-%04d.params``); ``checkpoint``: a run's best or
    latest checkpoint (fine-tuning copies it); ``image_size`` (H, W) and ``emb_size`` where
    known without loading (None otherwise); ``input_range``: the pixels the model's graph takes
    (1: RGB [0, 1], 255: RGB 0-255; every loaded model takes [0, 1] from the caller);
    ``input_norm``: the (mean, scale) a FaceResNet backbone of it uses (None: plain [0, 1]);
    ``backbone``: the settings of a network other than FaceResNet (``DlibResNet.describe()``;
    a named model's or one fine-tuned from it), None for a FaceResNet or an unknown graph;
    ``info``: model.json (or a run's resolved settings), ``{}`` if none.
    """
    spec: str
    kind: str
    path: str
    prefix: str = None
    epoch: int = None
    checkpoint: str = None
    image_size: tuple = None
    emb_size: int = None
    input_range: int = None
    input_norm: tuple = None
    backbone: dict = None
    info: dict = dataclasses.field(default_factory=dict)


def _newest_epoch(prefix):
    found = sorted(glob.glob(glob.escape(prefix) + '-[0-9][0-9][0-9][0-9].params'))
    return int(found[-1][-11:-7]) if found else None


def _run_checkpoint(folder):
    """A run folder's best checkpoint, else its latest one, else None."""
    checkpoints = os.path.join(folder, 'checkpoints')
    best = os.path.join(checkpoints, 'best.params')
    if os.path.isfile(best):
        return best
    state = latest_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None
    if state and os.path.isfile(os.path.join(checkpoints, str(state.get('params')))):
        return os.path.join(checkpoints, state['params'])
    return None


def _run_settings(params_path):
    """The resolved settings of the run whose ``checkpoints/`` holds ``params_path`` ({})."""
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(params_path))),
                          'config.json')
    if not os.path.isfile(config):
        return {}
    try:
        with open(config, encoding='utf-8') as f:
            resolved = json.load(f).get('resolved')  # None in runs of older versions
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError('%s: expected the JSON a run writes (%s: %s)'
                              % (config, type(e).__name__, e)) from None
    return resolved if isinstance(resolved, dict) else {}


def _is_insightface(prefix):
    """Whether ``PREFIX-symbol.json`` has InsightFace's IR-ResNet layer names (fresnet.py)."""
    with open(prefix + '-symbol.json', encoding='utf-8') as f:
        text = f.read()
    return '"stage1_unit1_conv1"' in text and '"conv0"' in text


def _named(spec, input_range):
    reference = spec.endswith('@dlib') and model_zoo.is_pretrained(spec[:-len('@dlib')])
    if not (reference or model_zoo.is_pretrained(spec)):
        return None
    if input_range not in (None, 1):
        raise ConfigError('%s takes the package\'s [0, 1] input; --input-range does not apply'
                          % spec)
    name = spec[:-len('@dlib')] if reference else spec
    entry = model_zoo.PRETRAINED_MODELS[name]
    size = (150, 150) if reference else tuple(entry['image_size'])
    return ModelSource(spec, 'dlib-reference' if reference else 'named',
                       model_zoo.pretrained_file(name), emb_size=entry['emb_size'],
                       image_size=size, input_range=1, info=dict(entry),
                       backbone=dict(backbone=name, input_size=list(size),
                                     geometry=entry['geometry'], emb_size=entry['emb_size']))


def _graph_model(spec, prefix, epoch, input_range, checkpoint=None):
    """An exported model or InsightFace checkpoint at ``prefix`` (``epoch``: None for the
    newest)."""
    if not os.path.isfile(prefix + '-symbol.json'):
        raise CheckpointError('%s: not found; expected a run folder, a .params checkpoint, an '
                              'exported model prefix (PREFIX-symbol.json + PREFIX-0000.params), '
                              'an .onnx file or one of the named models %s'
                              % (spec, ', '.join(model_zoo.PRETRAINED_MODELS)))
    if epoch is None:
        epoch = _newest_epoch(prefix)
    if epoch is None:
        raise CheckpointError('%s-symbol.json has no parameter file %s-NNNN.params beside it'
                              % (prefix, prefix))
    path = '%s-%04d.params' % (prefix, epoch)
    if not os.path.isfile(path):
        raise FileNotFoundError('%s: exported model file not found' % path)
    insightface = _is_insightface(prefix)
    info = read_model_info(prefix) or {}
    norm = INSIGHTFACE_INPUT_NORM if insightface else info.get('input_norm')
    settings = _run_settings(checkpoint) if checkpoint else {}
    if settings:  # what fine-tuning copies: the checkpoint's
        norm = settings.get('input_norm')
    return ModelSource(
        spec, 'insightface' if insightface else 'exported', path, prefix, epoch, checkpoint,
        model_image_size(prefix, path), info.get('emb_size'),
        input_range_of(prefix, input_range=input_range, log=False)[0],
        tuple(norm) if norm else None, info.get('backbone_settings'), info)


def resolve_model(spec, epoch=None, input_range=None):
    """What ``spec`` names (module notes) -> :class:`ModelSource`; ``epoch`` picks an exported
    model's or InsightFace checkpoint's epoch; ``input_range`` (1 or 255) overrides the pixel
    range its graph is taken to expect. CheckpointError (or FileNotFoundError) naming the path
    when nothing fits."""
    check_input_range(input_range)
    spec = os.fspath(spec)
    named = _named(spec, input_range)
    if named:
        return named
    if spec.lower().endswith('.onnx'):
        if not os.path.isfile(spec):
            raise FileNotFoundError('%s: ONNX model not found' % spec)
        return ModelSource(spec, 'onnx', spec, input_range=input_range or 255)
    path = spec
    if ',' in path and path.rsplit(',', 1)[1].isdigit():  # InsightFace's PREFIX,EPOCH
        path, given = path.rsplit(',', 1)
        epoch = int(given) if epoch is None else epoch
    if os.path.isdir(path):
        checkpoint = _run_checkpoint(path)
        symbols = sorted(glob.glob(os.path.join(glob.escape(path), 'model', '*-symbol.json')))
        if symbols and _newest_epoch(symbols[0][:-len('-symbol.json')]) is not None:
            return _graph_model(spec, symbols[0][:-len('-symbol.json')], epoch, input_range,
                                checkpoint)
        if checkpoint:
            return _checkpoint_source(spec, checkpoint, input_range)
        raise CheckpointError('%s: a run folder holds an exported model in model/, '
                              'checkpoints/best.params or a checkpoint in checkpoints/; found '
                              'none (a run with --no-export that has not finished an epoch?)'
                              % path)
    if path.endswith('-symbol.json'):
        path = path[:-len('-symbol.json')]
    match = _EPOCH_PARAMS.match(path)
    if match and os.path.isfile(match.group(1) + '-symbol.json'):
        path, epoch = match.group(1), int(match.group(2))
    elif path.endswith('.params'):
        if not os.path.isfile(path):
            raise FileNotFoundError('%s: checkpoint not found' % path)
        return _checkpoint_source(spec, path, input_range)
    return _graph_model(spec, path, epoch, input_range)


def refuse_range_255(path, input_range):
    """ConfigError for ``input_range=255`` on a model of this package (``path``), which takes
    RGB in [0, 1]."""
    if input_range == 255:
        raise ConfigError('%s is a model of this package, which takes RGB in [0, 1] (its '
                          'input_norm says the rest); input range 255 applies only to an '
                          'InsightFace checkpoint' % path)


def _checkpoint_source(spec, path, input_range):
    refuse_range_255(path, input_range)
    settings = _run_settings(path)
    norm = settings.get('input_norm')
    size = settings.get('image_size')
    backbone = settings.get('backbone') if isinstance(settings.get('backbone'), dict) else None
    return ModelSource(spec, 'checkpoint', path, checkpoint=path,
                       image_size=tuple(size) if size else None,
                       emb_size=(backbone or settings).get('emb_size'), input_range=1,
                       input_norm=tuple(norm) if norm else None, backbone=backbone,
                       info=settings)


def load_face_model(spec, ctx=None, epoch=None, input_range=None, geometry='default'):
    """Any face model the package can run -> ``(net, image_size, source)``.

    ``spec``: what :func:`resolve_model` takes (or a :class:`ModelSource`). ``net`` takes the
    package's input (RGB float32 (N, 3, H, W) in [0, 1]) and returns raw embeddings;
    ``image_size`` is the (H, W) it expects; ``source`` names what was loaded. The model's
    pixel range is decided as :func:`~gluon_arcface.models.interop.load_embedding_net` does
    (ONNX: 0-255); ``input_range`` (1 or 255) overrides it. ``geometry``: how a named
    pretrained model frames the crops (``model_zoo.get_pretrained``). CheckpointError when the
    file is not a face model (one 4-D input, embeddings out).
    """
    named = spec.kind == 'named' if isinstance(spec, ModelSource) else \
        model_zoo.is_pretrained(os.fspath(spec))
    if geometry != 'default' and not named:
        raise ConfigError('%s: a geometry applies to a named pretrained model only'
                          % getattr(spec, 'spec', spec))
    src = spec if isinstance(spec, ModelSource) else resolve_model(spec, epoch, input_range)
    if src.kind == 'named':
        return (model_zoo.get_pretrained(src.spec, ctx, geometry=geometry), src.image_size,
                src.spec)
    if src.kind == 'dlib-reference':
        net = model_zoo.DlibNative(src.spec[:-len('@dlib')])
        return net, net.image_size, src.spec
    if src.kind == 'onnx':
        net = load_onnx(src.path, input_range=input_range)
        return net, net.image_size, src.path
    if src.kind == 'checkpoint':
        raise CheckpointError('%s: no exported model to run (a checkpoint holds weights without '
                              'the graph; export it with scripts/export.py, or the run folder '
                              'needs model/ from a run without --no-export)' % src.spec)
    net = load_embedding_net(src.prefix, ctx, src.epoch, input_range)
    _check_face_model(net, src.image_size, src.prefix + '-symbol.json', ctx)
    return net, src.image_size, src.prefix


def _check_face_model(net, image_size, path, ctx):
    ctx = as_contexts(ctx)[0]
    try:
        with autograd.predict_mode():
            out = net(mnp.zeros((1, 3) + tuple(image_size), ctx=ctx))
    except mx.base.MXNetError as e:
        raise CheckpointError('%s does not run on one %dx%d RGB image: %s'
                              % ((path,) + tuple(image_size)
                                 + (str(e).splitlines()[0][:200],))) from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise CheckpointError('%s is not a face embedding model: one image gives an output of '
                              'shape %s, expected (1, embedding size)' % (path, out.shape))
