"""Models in and out in MXNet's format: the package's exports and InsightFace's checkpoints.

* :func:`export_embedding_net` writes ``prefix-symbol.json`` + ``prefix-0000.params`` (and
  ``model.json`` with the input convention when called by a run); :func:`load_embedding_net`
  loads such a model, or a checkpoint written by InsightFace's MXNet training (model zoo:
  LResNet100E-IR, LResNet50E-IR, MobileFaceNet ...), as a block that takes the package's input
  (RGB float32 (N, 3, H, W) in [0, 1]) whatever the model's own pixel convention.
* :func:`faceresnet_from_insightface` maps an IR-ResNet checkpoint of InsightFace's
  ``fresnet.py`` (unit v3, output 'E') into a :class:`~gluon_arcface.nn.model.FaceResNet`, so that
  training can continue from it (``--pretrained``); :func:`ir_symbol` and
  :func:`insightface_names` are that network's graph and names (also what the ONNX export of
  :mod:`~gluon_arcface.models.onnx_io` is built from).

InsightFace's names (``symbol/fresnet.py``): ``conv0``, ``bn0``, ``relu0`` (PReLU ``_gamma``),
``stage{i}_unit{j}_{bn1,conv1,bn2,relu1,conv2,bn3}``, the shortcut ``_conv1sc`` + ``_sc``,
then ``bn1``, Dropout, ``pre_fc1`` (FullyConnected) and ``fc1`` (BatchNorm, fix_gamma=True);
BatchNorm statistics ``_moving_mean`` / ``_moving_var``, eps 2e-5. Its input is ``data``, RGB
0-255, normalised inside the graph as ``(x - 127.5) * 0.0078125`` (after an ``identity`` named
'id', op ``_copy``, and in fp16 configurations a ``Cast``), or by a BatchNorm ``bn_data`` on the
raw pixels; the embedding is the internal output ``fc1_output`` (a saved training symbol may
continue to fc7).

The pixel range a model takes (:func:`input_range_of`): ``model.json``'s ``input`` for the
package's exports; else the graph's head, followed from ``data`` through identity / Cast nodes
(scalar subtract / multiply sized for 0-255 or for [0, 1], a BatchNorm on the raw input); else
[0, 1] for a graph written with NumPy semantics (the package's exports) and 0-255 for anything
else (InsightFace's convention). The choice and its reason are logged; ``input_range=`` (1 or
255) overrides it.
"""
import json
import logging
import os
import re
import warnings

import numpy as np

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import autograd, gluon
from mxnet import np as mnp

from ..runtime.devices import as_contexts
from ..runtime.errors import CheckpointError
from ..runtime.fileio import atomic_write, write_json
from ..nn.model import (BN_EPS, FaceResNet, backbone_of, compute_dtype_of, depth_of_units,
                        faceresnet_spec, set_compute_dtype)

__all__ = ['INSIGHTFACE_INPUT_NORM', 'export_embedding_net', 'load_embedding_net',
           'PixelRange', 'insightface_names', 'faceresnet_from_insightface', 'ir_symbol',
           'structural_name', 'read_model_info', 'input_range_of', 'check_input_range',
           'model_image_size', 'insightface_input_norm', 'write_model_info']

# InsightFace trains on (pixel - 127.5) / 128; on the package's [0, 1] input that is
# (x - 0.5) * (255 / 128).
INSIGHTFACE_INPUT_NORM = (0.5, 255.0 / 128.0)
PACKAGE_INPUT = 'RGB float32 (N, 3, H, W) in [0, 1]'
MODEL_INFO = 'model.json'  # beside an exported model: its input convention and size
INPUT_RANGES = (1, 255)

_log = logging.getLogger(__name__)  # under the package's logger (cli.LOGGER_NAME)


# ----------------------------------------------------------------------------- MXNet export

def export_embedding_net(net, prefix, image_size=(112, 112), epoch=0, dtype=None):
    """Export a (hybridizable) embedding network for deployment: ``prefix-symbol.json`` and
    ``prefix-%04d.params``. Returns the two paths. Input name ``data``, (N, 3, H, W) float32.
    ``dtype`` 'bfloat16' exports a graph whose backbone computes in bfloat16 (float32 weights,
    input and output; for CPUs with AVX512-BF16 or AMX); default: as ``net`` computes.
    """
    if not isinstance(net, gluon.HybridBlock):
        raise TypeError('only a HybridBlock can be exported, got %s' % type(net).__name__)
    if dtype is None or (dtype == 'float32' and backbone_of(net) is None):
        return _export(net, prefix, image_size, epoch)
    previous = compute_dtype_of(net)
    set_compute_dtype(net, dtype)
    try:
        return _export(net, prefix, image_size, epoch)
    finally:
        set_compute_dtype(net, previous)


def _export(net, prefix, image_size, epoch):
    ctx = as_contexts(None, net)[0]
    net.hybridize()
    with autograd.predict_mode():
        net(mnp.zeros((1, 3) + tuple(image_size), ctx=ctx))
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    # Export under a temporary prefix, then rename both files into place.
    with atomic_write(prefix + '-symbol.json') as tmp_sym, \
            atomic_write(prefix + '-%04d.params' % epoch) as tmp_params:
        tmp_prefix = tmp_sym + '.export'
        # MXNet drops the casts of mixed precision when saving, unless told otherwise.
        net.export(tmp_prefix, epoch=epoch, remove_amp_cast=False)
        os.replace(tmp_prefix + '-symbol.json', tmp_sym)
        os.replace(tmp_prefix + '-%04d.params' % epoch, tmp_params)
    return prefix + '-symbol.json', prefix + '-%04d.params' % epoch


def read_model_info(prefix):
    """``model.json`` beside an exported model (a dict), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(prefix)), MODEL_INFO)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError('%s: not the JSON an export writes (%s)' % (path, e)) from None
    return info if isinstance(info, dict) else None


# ----------------------------------------------------------------------------- loading

class PixelRange(gluon.HybridBlock):
    """A model taking RGB 0-255 behind the package's input: ``forward(x)`` with x in [0, 1]
    (N, 3, H, W) float32 returns ``block(x * 255)``."""

    def __init__(self, block, scale=255.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        with self.name_scope():
            self.block = block

    def hybrid_forward(self, F, x):
        return self.block(x * self.scale)


# Nodes that hand the input on unchanged (InsightFace's identity 'id' is op _copy; Cast in its
# fp16 configurations, amp_cast in the package's bfloat16 exports).
_PASS_THROUGH = {'_copy', 'identity', '_np_copy', 'Cast', 'cast', '_npx_cast', 'amp_cast',
                 'BlockGrad', 'stop_gradient'}
# Scalar arithmetic on the input -> (verb, how it changes the affine map a * p + b).
_SCALAR_OPS = {
    '_minus_scalar': ('subtracts', lambda a, b, s: (a, b - s)),
    '_npi_subtract_scalar': ('subtracts', lambda a, b, s: (a, b - s)),
    '_plus_scalar': ('adds', lambda a, b, s: (a, b + s)),
    '_npi_add_scalar': ('adds', lambda a, b, s: (a, b + s)),
    '_mul_scalar': ('multiplies by', lambda a, b, s: (a * s, b * s)),
    '_npi_multiply_scalar': ('multiplies by', lambda a, b, s: (a * s, b * s)),
    '_div_scalar': ('divides by', lambda a, b, s: (a / s, b / s)),
    '_npi_true_divide_scalar': ('divides by', lambda a, b, s: (a / s, b / s)),
}


def _attrs(node):
    return node.get('attrs', node.get('param', node.get('attr', {}))) or {}


def _input_head(nodes):
    """The nodes at the head of a graph, followed from ``data`` through pass-through nodes,
    scalar arithmetic and one BatchNorm -> ``(steps, first)``: the list of nodes followed
    (pass-through ones left out) and the first node that is none of these (or None)."""
    consumers = {}
    for i, node in enumerate(nodes):
        for src in node.get('inputs', []):
            consumers.setdefault(src[0], []).append(i)
    data = [i for i, n in enumerate(nodes) if n['op'] == 'null' and n['name'] == 'data']
    steps, current = [], data[0] if data else None
    while current is not None:
        following = consumers.get(current, [])
        if len(following) != 1:  # the end, or the input used twice: not a plain head
            return steps, nodes[following[0]] if following else None
        node = nodes[following[0]]
        is_bn = (node['op'] == 'BatchNorm' and node['inputs'][0][0] == current and
                 not any(n['op'] == 'BatchNorm' for n in steps))
        if node['op'] not in _PASS_THROUGH and node['op'] not in _SCALAR_OPS and not is_bn:
            return steps, node
        if node['op'] not in _PASS_THROUGH:
            steps.append(node)
        current = following[0]
    return steps, None


def _graph_input_range(nodes):
    """``(range, reason)`` the head of a graph shows, or None: the first scalar operation on
    the pixels is sized for 0-255 (InsightFace's ``- 127.5``, a ``* 0.0078125`` or ``/ 255``)
    or for [0, 1]; a BatchNorm on the raw input (InsightFace's ``bn_data``) means 0-255."""
    steps, _ = _input_head(nodes)
    if not steps:
        return None
    node = steps[0]
    if node['op'] == 'BatchNorm':
        return 255, '%s BatchNorm on the input' % node['name']
    verb = _SCALAR_OPS[node['op']][0]
    scalar = float(_attrs(node).get('scalar', 0))
    if verb in ('subtracts', 'adds'):
        big = abs(scalar) > 1.0
    elif verb == 'multiplies by':
        big = 0 < abs(scalar) < 0.1
    else:
        big = abs(scalar) > 10.0
    return (255 if big else 1), 'graph %s %g after data' % (verb, scalar)


def check_input_range(input_range):
    """``input_range`` if it is None, 1 or 255, else ValueError."""
    if input_range is not None and input_range not in INPUT_RANGES:
        raise ValueError('input_range is 1 (RGB in [0, 1]) or 255 (RGB 0-255), got %r'
                         % (input_range,))
    return input_range


def input_range_of(prefix, sym=None, input_range=None, log=True):
    """``(range, reason)``: the pixel range (255 or 1) the model at ``prefix`` takes, and why.

    ``input_range`` (1 or 255) overrides; else ``model.json``'s ``input`` beside the model;
    else the normalisation at the head of the graph (``sym``, or ``PREFIX-symbol.json``;
    followed through identity / ``_copy`` and ``Cast``): scalar subtract / multiply sized for
    0-255 or [0, 1], a BatchNorm (``bn_data``) on the raw input for 0-255; else [0, 1] for a
    graph with NumPy semantics (the package's exports) and 0-255 (InsightFace's convention)
    for any other. Logs the decision (INFO) unless ``log`` is false.
    """
    name = os.path.basename(prefix)
    text = '%s: input taken as %%s (%%s)' % name
    if check_input_range(input_range) is not None:
        reason = 'input_range=%d given' % input_range
    else:
        info = read_model_info(prefix) or {}
        if 'input' in info:
            range_255 = '0-255' in info['input'] or '0, 255' in info['input']
            input_range, reason = (255 if range_255 else 1), '%s: %s' % (MODEL_INFO,
                                                                        info['input'])
        else:
            if sym is None:
                sym, legacy = _load_symbol(prefix + '-symbol.json')
            else:
                legacy = _load_symbol(prefix + '-symbol.json', json_only=True)
            found = _graph_input_range(json.loads(sym.tojson(remove_amp_cast=False))['nodes'])
            if found:
                input_range, reason = found
            elif not legacy:
                input_range, reason = 1, ('no %s; a graph with NumPy semantics, as this '
                                          'package exports' % MODEL_INFO)
            else:
                input_range, reason = 255, ('no %s and no recognised normalisation: '
                                            'InsightFace\'s convention' % MODEL_INFO)
    if log:
        _log.info(text, 'RGB 0-255' if input_range == 255 else 'RGB [0, 1]', reason)
    return input_range, reason


def _load_symbol(sym_path, json_only=False):
    """``(symbol, legacy)`` of a symbol file (``legacy``: written without NumPy semantics, as
    InsightFace's are), or only ``legacy``; CheckpointError when it is not a symbol file."""
    try:
        with open(sym_path, encoding='utf-8') as f:
            legacy = not json.load(f).get('attrs', {}).get('is_np_shape')
        return legacy if json_only else (mx.sym.load(sym_path), legacy)
    except Exception as e:  # noqa: BLE001 - MXNet reports bad JSON variously
        raise CheckpointError('%s is not an MXNet symbol file: %s'
                              % (sym_path, str(e).splitlines()[0][:200])) from None


def _embedding_output(sym, path):
    """The embedding of a (possibly training) symbol: ``fc1_output`` when the graph goes
    beyond it (InsightFace's checkpoints end at the fc7 logits or the loss)."""
    if len(sym.list_outputs()) == 1 and sym.list_outputs()[0] == 'fc1_output':
        return sym
    internals = sym.get_internals()
    if 'fc1_output' in internals.list_outputs():
        return internals['fc1_output']
    outputs = sym.list_outputs()
    if len(outputs) != 1:
        raise CheckpointError('%s: a face model has one output (the embedding) or an internal '
                              'fc1_output; this one has %d outputs (%s)'
                              % (path, len(outputs), ', '.join(outputs[:4])))
    return sym


def load_embedding_net(prefix, ctx=None, epoch=0, input_range=None):
    """Load an exported embedding network or an InsightFace MXNet checkpoint.

    ``prefix``: ``PREFIX`` of ``PREFIX-symbol.json`` + ``PREFIX-%04d.params`` (``epoch``).
    Returns a block for the package's input (RGB float32 (N, 3, H, W) in [0, 1]) giving raw
    embeddings (N, D): the model itself, or, for a model that takes RGB 0-255, a
    :class:`PixelRange` around it. The range is :func:`input_range_of`'s (model.json, the
    graph's head, else InsightFace's 0-255; logged); ``input_range`` (1 or 255) overrides it.
    The embedding is the internal ``fc1_output`` when the symbol goes beyond it. The block has
    ``input_range`` (255 or 1) and ``source`` attributes.
    """
    check_input_range(input_range)
    ctx = as_contexts(ctx)[0]
    sym_path, params_path = prefix + '-symbol.json', prefix + '-%04d.params' % epoch
    for path in (sym_path, params_path):
        if not os.path.isfile(path):
            raise FileNotFoundError('%s: exported model file not found' % path)
    sym, legacy = _load_symbol(sym_path)
    if 'data' not in sym.list_inputs():
        raise CheckpointError('%s: a face model takes an input named "data"; this one takes %s'
                              % (sym_path, ', '.join(sym.list_arguments()[:4])))
    sym = _embedding_output(sym, sym_path)
    range_255 = input_range_of(prefix, sym, input_range)[0] == 255
    params = _load_params(params_path)
    needed = set(sym.list_arguments() + sym.list_auxiliary_states()) - {'data'}
    missing = sorted(needed - set(params))
    if missing:
        raise CheckpointError('%s lacks %d parameter(s) of %s (%s, ...): not this model\'s '
                              'parameters' % (params_path, len(missing), sym_path, missing[0]))
    with warnings.catch_warnings():  # the input's dtype is only known at the first call
        warnings.filterwarnings('ignore', message='Cannot decide type')
        if legacy:  # InsightFace's symbols predate NumPy semantics
            block = _LegacySymbolBlock(sym, {k: params[k] for k in needed}, ctx)
        else:
            block = gluon.SymbolBlock(sym.as_np_ndarray(), mx.sym.var('data').as_np_ndarray())
            block.collect_params().load(params_path, ctx=ctx, ignore_extra=True,
                                        cast_dtype=True, dtype_source='saved')
    if range_255:
        block = PixelRange(block)
    block.input_range = 255 if range_255 else 1
    block.source = prefix
    return block


def _load_params(path):
    """``{name: legacy NDArray}`` of a parameter file (``arg:``/``aux:`` prefixes dropped),
    written with or without NumPy semantics."""
    try:
        try:
            loaded = mx.nd.load(path)
        except mx.base.MXNetError as e:
            if 'is_np_shape' not in str(e):
                raise
            with mx.util.np_array(False), mx.util.np_shape(False):  # written before NumPy
                loaded = mx.nd.load(path)                           # semantics
    except Exception as e:  # noqa: BLE001
        raise CheckpointError('%s is unreadable (truncated or not an MXNet parameter file): %s'
                              % (path, str(e).splitlines()[0][:200])) from None
    return {k.split(':', 1)[-1]: v for k, v in loaded.items()}


class _LegacySymbolBlock(gluon.HybridBlock):
    """A symbol written without NumPy semantics (InsightFace's), run by a legacy executor
    bound for each call; takes and returns ``mxnet.np`` arrays like the package's blocks."""

    def __init__(self, sym, params, ctx):
        super().__init__()
        self._sym, self._ctx = sym, ctx
        self._args = {k: v.as_in_context(ctx) for k, v in params.items()
                      if k in sym.list_arguments()}
        self._aux = {k: v.as_in_context(ctx) for k, v in params.items()
                     if k in sym.list_auxiliary_states()}

    def forward(self, x):
        x = x.as_nd_ndarray() if hasattr(x, 'as_nd_ndarray') else x
        # A new executor each time (some 30 ms for ResNet-100): MXNet 1.9.1's oneDNN executor
        # fails on its second forward for some graphs, e.g. MobileFaceNet's FullyConnected
        # pre_fc1 on a 4-D BatchNorm output ("We can't generate TBlob for MKLDNN data").
        with mx.util.np_array(False), mx.util.np_shape(False):
            args = dict(self._args, data=x.copy())
            executor = self._sym.bind(x.context, args, aux_states=self._aux, grad_req='null')
            out = executor.forward(is_train=False)[0]
        return out.as_np_ndarray()

    def hybridize(self, active=True, **kwargs):  # the executor is already a static graph
        pass

    def collect_params(self, select=None):
        return gluon.ParameterDict()


# ----------------------------------------------------------------------------- InsightFace names

def insightface_names(units, fc1_bn=True):
    """``{FaceResNet structural name: InsightFace name}`` for an IR ResNet of ``units`` per
    stage; the embedding layer is ``output.dense`` (its index moves with Dropout). With
    ``fc1_bn`` the 'E' head's BatchNorm ``fc1`` appears under ``fc1.*``."""
    bn = {'gamma': 'gamma', 'beta': 'beta', 'running_mean': 'moving_mean',
          'running_var': 'moving_var'}
    names = {'features.0.weight': 'conv0_weight', 'features.2.alpha': 'relu0_gamma',
             'output.dense.weight': 'pre_fc1_weight', 'output.dense.bias': 'pre_fc1_bias'}

    def add_bn(ours, theirs):
        for a, b in bn.items():
            names['%s.%s' % (ours, a)] = '%s_%s' % (theirs, b)
    add_bn('features.1', 'bn0')
    add_bn('output.0', 'bn1')
    if fc1_bn:
        add_bn('fc1', 'fc1')
    for s, count in enumerate(units):
        for u in range(count):
            ours, theirs = 'features.%d.%d' % (3 + s, u), 'stage%d_unit%d' % (s + 1, u + 1)
            add_bn(ours + '.body.0', theirs + '_bn1')
            names[ours + '.body.1.weight'] = theirs + '_conv1_weight'
            add_bn(ours + '.body.2', theirs + '_bn2')
            names[ours + '.body.3.alpha'] = theirs + '_relu1_gamma'
            names[ours + '.body.4.weight'] = theirs + '_conv2_weight'
            add_bn(ours + '.body.5', theirs + '_bn3')
            if u == 0:
                names[ours + '.downsample.0.weight'] = theirs + '_conv1sc_weight'
                add_bn(ours + '.downsample.1', theirs + '_sc')
    return names


def structural_name(name):
    return re.sub(r'^output\.\d+\.(weight|bias)$', r'output.dense.\1', name)


def _ir_units(params):
    """Units per stage of an InsightFace IR checkpoint's parameter names."""
    units = []
    for stage in range(1, 5):
        found = {int(m.group(1)) for k in params
                 for m in [re.match(r'stage%d_unit(\d+)_conv1_weight$' % stage, k)] if m}
        if not found:
            return None
        units.append(max(found))
    return tuple(units)


def insightface_input_norm(prefix, epoch=0, input_range=None, params=None):
    """The FaceResNet ``input_norm`` (mean, scale) reproducing, on the package's [0, 1] input,
    what an InsightFace checkpoint's graph does to its pixels before ``conv0``: identity /
    ``Cast`` nodes, scalar subtract / multiply, a BatchNorm ``bn_data`` (equal statistics in
    every channel). Its pixels are 0-255 or [0, 1] as :func:`input_range_of` decides
    (``input_range`` overrides). None for no normalisation at all. CheckpointError, naming the
    file, when the head cannot be written so (e.g. per-channel ``bn_data`` statistics).
    ``params``: the checkpoint's parameters if already loaded."""
    sym_path = prefix + '-symbol.json'
    if not os.path.isfile(sym_path):
        raise FileNotFoundError('%s: the checkpoint\'s symbol is needed (its head tells the '
                                'input normalisation)' % sym_path)
    if params is None:
        params = _load_params(prefix + '-%04d.params' % epoch)
    sym = _load_symbol(sym_path)[0]
    steps, first = _input_head(json.loads(sym.tojson(remove_amp_cast=False))['nodes'])
    if first is None or first['op'] != 'Convolution' or first['name'] != 'conv0':
        raise CheckpointError('%s: the input reaches %s (%s) before conv0; only identity, Cast, '
                              'scalar subtract / multiply and a bn_data BatchNorm can be mapped '
                              'into a FaceResNet' % (sym_path, first and first['name'],
                                                     first and first['op']))
    scale, shift = 1.0, 0.0  # the head as scale * pixel + shift (per channel after a BatchNorm)
    for node in steps:
        if node['op'] != 'BatchNorm':
            scale, shift = _SCALAR_OPS[node['op']][1](scale, shift,
                                                       float(_attrs(node)['scalar']))
            continue
        attrs, name = _attrs(node), node['name']
        stats = {k: params[name + '_' + k].asnumpy().astype(np.float64) for k in
                 ('moving_mean', 'moving_var', 'beta', 'gamma') if name + '_' + k in params}
        if 'moving_var' not in stats:
            raise CheckpointError('%s lacks %s_moving_var' % (sym_path, name))
        gamma = 1.0 if attrs.get('fix_gamma', 'True') in ('True', 'true', '1') else \
            stats['gamma']
        k = gamma / np.sqrt(stats['moving_var'] + float(attrs.get('eps', 1e-3)))
        scale, shift = scale * k, (shift - stats['moving_mean']) * k + stats.get('beta', 0.0)
    scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
    for value in (scale, shift):
        if np.ptp(value) > 1e-6 * np.abs(value).max():
            raise CheckpointError(
                '%s: the input is normalised per channel (a bn_data BatchNorm with different '
                'statistics in each channel), which a FaceResNet\'s input_norm (one mean, one '
                'scale) cannot hold; such a checkpoint can be verified and embedded through '
                'interop.load_embedding_net (scripts/verify.py) but not mapped into a '
                'FaceResNet' % sym_path)
    scale, shift = float(scale.flat[0]), float(shift.flat[0])
    if scale == 0:
        raise CheckpointError('%s: the head multiplies the input by 0' % sym_path)
    pixels = input_range_of(prefix, sym, input_range)[0]
    # scale * pixel + shift with pixel = pixels * x  ->  (x - mean) * input_scale
    input_scale = scale * pixels
    mean = -shift / input_scale
    return None if (mean, input_scale) == (0.0, 1.0) else (mean, input_scale)


def faceresnet_from_insightface(prefix, epoch=0, ctx=None, use_dropout=False,
                                input_range=None):
    """A :class:`~gluon_arcface.nn.model.FaceResNet` holding an InsightFace IR-ResNet checkpoint.

    The network computes the checkpoint's ``fc1`` embedding from the package's [0, 1] input:
    ``input_norm`` reproduces the pixel normalisation at the head of the checkpoint's graph
    (:func:`insightface_input_norm`; 0-255 pixels unless ``input_range`` = 1 says the graph
    takes [0, 1]), and the 'E' head's final BatchNorm (``fc1``, fix_gamma) is folded into the
    embedding layer (same function in predict mode). Returns ``(net, info)`` with ``info`` =
    dict(num_layers, emb_size, input_norm). Raises CheckpointError when the checkpoint is not
    such a network, or when its input is normalised per channel (``bn_data``).
    """
    params_path = prefix + '-%04d.params' % epoch
    if not os.path.isfile(params_path):
        raise FileNotFoundError('%s: checkpoint parameters not found' % params_path)
    params = _load_params(params_path)
    units = _ir_units(params)
    depth = depth_of_units(units)
    if depth is None:
        raise CheckpointError('%s: not an InsightFace IR ResNet of 18, 34, 50 or 100 layers '
                              '(units per stage found: %s)' % (params_path, units))
    if 'pre_fc1_weight' not in params:
        raise CheckpointError('%s: no pre_fc1 embedding layer (InsightFace output type E '
                              'expected)' % params_path)
    input_norm = insightface_input_norm(prefix, epoch, input_range, params)
    weight = params['pre_fc1_weight'].asnumpy().astype(np.float32)
    bias = params.get('pre_fc1_bias')
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else \
        bias.asnumpy().astype(np.float32)
    if 'fc1_moving_var' in params:  # fold BatchNorm(fix_gamma=True): y = (z - mean) / std + beta
        std = np.sqrt(params['fc1_moving_var'].asnumpy().astype(np.float32) + BN_EPS)
        beta = params['fc1_beta'].asnumpy() if 'fc1_beta' in params else 0.0
        bias = (bias - params['fc1_moving_mean'].asnumpy()) / std + beta
        weight = weight / std[:, None]
    ctx = as_contexts(ctx)[0]
    net = FaceResNet(faceresnet_spec(depth), weight.shape[0], use_dropout,
                     input_norm=input_norm)
    names = insightface_names(units, fc1_bn=False)
    for name, param in net._collect_params_with_prefix().items():
        theirs = names[structural_name(name)]
        if theirs == 'pre_fc1_weight':
            value = weight
        elif theirs == 'pre_fc1_bias':
            value = bias
        else:
            if theirs not in params:
                raise CheckpointError('%s lacks %s: not an IR ResNet of fresnet.py'
                                      % (params_path, theirs))
            value = params[theirs].asnumpy()
        param.shape = value.shape
        param.initialize(ctx=ctx)
        param.set_data(mnp.array(value.astype(np.float32), ctx=ctx))
    return net, dict(num_layers=depth, emb_size=int(weight.shape[0]),
                     input_norm=list(input_norm) if input_norm else None)


def ir_symbol(units, emb_size, fc1_bn=True, pixel_sub=127.5, pixel_mul=0.0078125, data=None):
    """The legacy MXNet symbol of an IR ResNet with InsightFace's names (``fresnet.py``,
    unit v3): input ``data`` (N, 3, H, W); ``(data - pixel_sub) * pixel_mul`` first (None:
    left out); output ``fc1`` (the 'E' head's BatchNorm) when ``fc1_bn``, else ``pre_fc1``.
    ``data``: the symbol the network starts from (default the variable ``data``), e.g. the
    ``identity`` or ``Cast`` nodes of InsightFace's variants."""
    sym = mx.sym

    def bn(x, name, fix_gamma=False):
        return sym.BatchNorm(x, fix_gamma=fix_gamma, eps=BN_EPS, momentum=0.9, name=name)

    def conv(x, channels, kernel, stride, pad, name):
        return sym.Convolution(x, num_filter=channels, kernel=kernel, stride=stride, pad=pad,
                               no_bias=True, name=name)

    body = sym.var('data') if data is None else data
    if pixel_sub is not None:
        body = body - pixel_sub
    if pixel_mul is not None:
        body = body * pixel_mul
    body = conv(body, 64, (3, 3), (1, 1), (1, 1), 'conv0')
    body = sym.LeakyReLU(bn(body, 'bn0'), act_type='prelu', name='relu0')
    for s, (count, channels) in enumerate(zip(units, (64, 128, 256, 512))):
        for u in range(count):
            name = 'stage%d_unit%d' % (s + 1, u + 1)
            stride = (2, 2) if u == 0 else (1, 1)
            x = conv(bn(body, name + '_bn1'), channels, (3, 3), (1, 1), (1, 1), name + '_conv1')
            x = sym.LeakyReLU(bn(x, name + '_bn2'), act_type='prelu', name=name + '_relu1')
            x = bn(conv(x, channels, (3, 3), stride, (1, 1), name + '_conv2'), name + '_bn3')
            shortcut = body
            if u == 0:
                shortcut = bn(conv(body, channels, (1, 1), stride, (0, 0), name + '_conv1sc'),
                              name + '_sc')
            body = x + shortcut
    # Flatten is implicit in FullyConnected; explicit, MXNet's ONNX converter gets it right.
    body = sym.Flatten(sym.Dropout(bn(body, 'bn1'), p=0.4))
    body = sym.FullyConnected(body, num_hidden=emb_size, name='pre_fc1')
    return bn(body, 'fc1', fix_gamma=True) if fc1_bn else body


def write_model_info(folder, image_size, emb_size, num_layers, cos_threshold=None,
                     input_norm=None, backbone=None):
    """``model.json`` of an exported model: input convention, size, embedding size, the
    backbone's ``input_norm`` and the verified decision thresholds (cosine); ``backbone``: the
    settings of a network other than FaceResNet (``DlibResNet.describe()``)."""
    info = dict(image_size=list(image_size), emb_size=emb_size, num_layers=num_layers,
                cos_threshold=cos_threshold or {}, input=PACKAGE_INPUT,
                input_norm=list(input_norm) if input_norm else None)
    if backbone:
        info['backbone_settings'] = dict(backbone)
        info['backbone'] = backbone['backbone']
    return write_json(os.path.join(folder, MODEL_INFO), info)


# ----------------------------------------------------------------------------- any model

def model_image_size(prefix, params_path):
    """(H, W) an exported or InsightFace model takes: model.json, else the square side at
    which the graph's inferred parameter shapes are the checkpoint's (tried: the side the
    embedding layer's input implies for an IR ResNet, 512 channels at 1/16 of it, then common
    sizes), else that side or 112."""
    info = read_model_info(prefix) or {}
    if info.get('image_size'):
        return tuple(info['image_size'])
    params = _load_params(params_path)
    guess = None
    for name, value in params.items():
        if name.endswith(('pre_fc1_weight', 'dense0_weight')) and value.ndim == 2:
            side = int(round((value.shape[1] / 512) ** 0.5)) * 16
            if 512 * (side // 16) ** 2 == value.shape[1]:
                guess = side
                break
    try:
        sym, legacy = _load_symbol(prefix + '-symbol.json')
    except (CheckpointError, OSError):
        legacy = False
    if legacy:  # e.g. MobileFaceNet: a 7x7 depthwise layer makes the embedding input 512
        sym = _embedding_output(sym, prefix)
        shapes = {k: tuple(v.shape) for k, v in params.items()}
        for side in dict.fromkeys(([guess] if guess else []) + [112, 128, 96, 64, 32, 16]):
            if _shapes_fit(sym, shapes, side):
                return side, side
    return (guess, guess) if guess else (112, 112)


def _shapes_fit(sym, shapes, side):
    """Whether a legacy symbol on (1, 3, side, side) infers the parameter shapes ``shapes``."""
    try:
        with mx.util.np_array(False), mx.util.np_shape(False):
            args, _, aux = sym.infer_shape_partial(data=(1, 3, side, side))
    except mx.base.MXNetError:
        return False
    names = sym.list_arguments() + sym.list_auxiliary_states()
    inferred = dict(zip(names, list(args or []) + list(aux or [])))
    return all(tuple(inferred.get(k) or ()) == v for k, v in shapes.items() if k in inferred)
