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
  ``export_embedding_net`` (``arg:``/``aux:`` names like ``testblock0_faceresnet0_conv0_weight``).
"""
import glob
import os
import re

from . import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import npx

from .errors import CheckpointError

__all__ = ['find_backbone_file', 'load_backbone']

_DENSE = re.compile(r'^output\.\d+\.(weight|bias)$')  # the embedding layer (index moves with
_PREFIX = re.compile(r'^.*?faceresnet\d+_')            # the optional Dropout)


def _exported_params(prefix):
    found = sorted(glob.glob(glob.escape(prefix) + '-[0-9][0-9][0-9][0-9].params'))
    return found[-1] if found else None


def find_backbone_file(source):
    """``(params file, kind)`` for ``source``; kind is ``'structural'`` (a checkpoint) or
    ``'exported'`` (``export_embedding_net``'s layout). CheckpointError when nothing fits."""
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
    if os.path.isfile(source) and source.endswith('.params'):
        stem = re.sub(r'-\d{4}\.params$', '', source)
        kind = 'exported' if stem != source and os.path.isfile(stem + '-symbol.json') \
            else 'structural'
        return source, kind
    params = _exported_params(source)
    if params and os.path.isfile(source + '-symbol.json'):
        return params, 'exported'
    raise CheckpointError('%s: not found; expected a run folder, a .params checkpoint or an '
                          'exported model prefix (PREFIX-symbol.json + PREFIX-0000.params)'
                          % source)


def _backbone(net):
    """The FaceResNet inside ``net`` (TrainBlock, TestBlock, FeatBlock, FaceResNet)."""
    from .model import FaceResNet
    if isinstance(net, FaceResNet):
        return net
    feat_net = getattr(net, 'feat_net', None)
    if feat_net is not None and len(feat_net) == 1 and isinstance(feat_net[0], FaceResNet):
        return feat_net[0]
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
    try:
        arrays = npx.load(path)
    except Exception as e:  # noqa: BLE001 - MXNet reports unreadable files variously
        raise CheckpointError('%s is unreadable (truncated or not an MXNet parameter file): %s'
                              % (path, str(e).splitlines()[0][:200])) from None
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
