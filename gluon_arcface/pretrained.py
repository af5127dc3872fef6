"""Backbones from elsewhere, for fine-tuning: a run folder, a checkpoint or an exported model.

:func:`load_backbone` copies every parameter of a FaceResNet (convolutions, BatchNorm weights
and running statistics, PReLU slopes, the embedding layer) from a trained model into the
backbone of a network about to be trained; the margin head is left as it is (a new head for new
identities). Parameters are matched by name and checked by shape, so a model of another depth,
embedding size or input size is refused with both shapes named.

Sources (:func:`find_backbone_file`):

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
import glob
import json
import os
import re

from . import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import npx

from .errors import CheckpointError
from .model import backbone_of

__all__ = ['find_backbone_file', 'backbone_input_norm', 'load_backbone']

_DENSE = re.compile(r'^output\.\d+\.(weight|bias)$')  # the embedding layer (index moves with
_PREFIX = re.compile(r'^.*?faceresnet\d+_')            # the optional Dropout)


def _exported_params(prefix):
    found = sorted(glob.glob(glob.escape(prefix) + '-[0-9][0-9][0-9][0-9].params'))
    return found[-1] if found else None


def find_backbone_file(source):
    """``(params file, kind)`` for ``source``; kind is ``'structural'`` (a checkpoint) or
    ``'exported'`` (``export_embedding_net``'s layout) or ``'insightface'``; ``source`` may be
    ``PREFIX,EPOCH`` as InsightFace names checkpoints. CheckpointError when nothing fits."""
    source = os.fspath(source)
    if os.path.isdir(source):
        checkpoints = os.path.join(source, 'checkpoints')
        best = os.path.join(checkpoints, 'best.params')
        if os.path.isfile(best):
            return best, 'structural'
        from .checkpoint import latest_checkpoint
        state = latest_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None
        if state and os.path.isfile(os.path.join(checkpoints, str(state.get('params')))):
            return os.path.join(checkpoints, state['params']), 'structural'
        symbols = sorted(glob.glob(os.path.join(glob.escape(source), 'model', '*-symbol.json')))
        if symbols and _exported_params(symbols[0][:-len('-symbol.json')]):
            return _exported_params(symbols[0][:-len('-symbol.json')]), 'exported'
        raise CheckpointError('%s: a run folder holds checkpoints/best.params, a checkpoint in '
                              'checkpoints/ or an exported model in model/; found none' % source)
    if source.endswith('-symbol.json'):
        source = source[:-len('-symbol.json')]
    if ',' in source and source.rsplit(',', 1)[1].isdigit():  # InsightFace's PREFIX,EPOCH
        stem, epoch = source.rsplit(',', 1)
        source = '%s-%04d.params' % (stem, int(epoch))
    if os.path.isfile(source) and source.endswith('.params'):
        stem = re.sub(r'-\d{4}\.params$', '', source)
        if stem != source and os.path.isfile(stem + '-symbol.json'):
            return source, _exported_kind(stem)
        return source, 'structural'
    params = _exported_params(source)
    if params and os.path.isfile(source + '-symbol.json'):
        return params, _exported_kind(source)
    raise CheckpointError('%s: not found; expected a run folder, a .params checkpoint or an '
                          'exported model prefix (PREFIX-symbol.json + PREFIX-0000.params)'
                          % source)


def _exported_kind(prefix):
    """'insightface' for a symbol with InsightFace's layer names (fresnet.py), else 'exported'."""
    with open(prefix + '-symbol.json', encoding='utf-8') as f:
        text = f.read()
    return 'insightface' if '"stage1_unit1_conv1"' in text and '"conv0"' in text else 'exported'


def backbone_input_norm(source):
    """The ``input_norm`` (mean, scale) a backbone from ``source`` needs (None: the package's
    plain [0, 1] input): InsightFace's normalisation for its checkpoints, else what the run's
    config.json or the export's model.json recorded."""
    path, kind = find_backbone_file(source)
    if kind == 'insightface':
        from .interop import INSIGHTFACE_INPUT_NORM
        return INSIGHTFACE_INPUT_NORM
    from .interop import read_model_info
    info = read_model_info(path)  # model.json beside an export; CheckpointError if unreadable
    if info is None:
        config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                              'config.json')  # a run's checkpoints/ -> the run's config.json
        if not os.path.isfile(config):
            return None
        try:
            with open(config, encoding='utf-8') as f:
                info = json.load(f).get('resolved')  # None in runs of older versions
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError('%s: expected the JSON a run writes (%s: %s)'
                                  % (config, type(e).__name__, e)) from None
    norm = info.get('input_norm') if isinstance(info, dict) else None
    return tuple(norm) if norm else None


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
    touched). ``source``: a run folder, a checkpoint or an exported model (module notes).
    Returns the file read. Raises CheckpointError when the file is not such a model, or when a
    parameter is missing or has another shape (naming both shapes).
    """
    path, kind = find_backbone_file(source)
    backbone = _backbone(net)
    if kind == 'insightface':  # mapped into a FaceResNet first, then copied like a checkpoint
        from .interop import faceresnet_from_insightface
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
        source_norm = backbone_input_norm(source)
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
