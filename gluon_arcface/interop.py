"""Models in and out: exported MXNet models, InsightFace's MXNet checkpoints, and ONNX.

* :func:`export_embedding_net` writes ``prefix-symbol.json`` + ``prefix-0000.params`` (and
  ``model.json`` with the input convention when called by a run); :func:`load_embedding_net`
  loads such a model, or a checkpoint written by InsightFace's MXNet training (model zoo:
  LResNet100E-IR, LResNet50E-IR, MobileFaceNet ...), as a block that takes the package's input
  (RGB float32 (N, 3, H, W) in [0, 1]) whatever the model's own pixel convention.
* :func:`faceresnet_from_insightface` maps an IR-ResNet checkpoint of InsightFace's
  ``fresnet.py`` (unit v3, output 'E') into a :class:`~gluon_arcface.model.FaceResNet`, so that
  training can continue from it (``--pretrained``).
* :func:`export_onnx` writes an ONNX model for onnxruntime and the ``insightface`` package.

InsightFace's names (``symbol/fresnet.py``): ``conv0``, ``bn0``, ``relu0`` (PReLU ``_gamma``),
``stage{i}_unit{j}_{bn1,conv1,bn2,relu1,conv2,bn3}``, the shortcut ``_conv1sc`` + ``_sc``,
then ``bn1``, Dropout, ``pre_fc1`` (FullyConnected) and ``fc1`` (BatchNorm, fix_gamma=True);
BatchNorm statistics ``_moving_mean`` / ``_moving_var``, eps 2e-5. Its input is ``data``, RGB
0-255, normalised inside the graph as ``(x - 127.5) * 0.0078125``; the embedding is the
internal output ``fc1_output`` (a saved training symbol may continue to fc7).
"""
import glob
import json
import os
import re
import warnings

import numpy as np

from . import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import autograd, gluon
from mxnet import np as mnp

from .devices import as_contexts
from .errors import CheckpointError
from .fileio import atomic_write, write_json
from .model import (BN_EPS, FaceResNet, backbone_of, compute_dtype_of, depth_of_units,
                    faceresnet_spec, set_compute_dtype)

__all__ = ['INSIGHTFACE_INPUT_NORM', 'export_embedding_net', 'load_embedding_net',
           'PixelRange', 'insightface_names', 'faceresnet_from_insightface', 'ir_symbol',
           'export_onnx', 'load_onnx', 'OnnxEmbeddingNet', 'load_face_model',
           'faceresnet_from_model', 'read_model_info',
           'write_model_info']

# InsightFace trains on (pixel - 127.5) / 128; on the package's [0, 1] input that is
# (x - 0.5) * (255 / 128).
INSIGHTFACE_INPUT_NORM = (0.5, 255.0 / 128.0)
PACKAGE_INPUT = 'RGB float32 (N, 3, H, W) in [0, 1]'
MODEL_INFO = 'model.json'  # beside an exported model: its input convention and size


# ----------------------------------------------------------------------------- MXNet export

def export_embedding_net(net, prefix, image_size=(112, 112), epoch=0, dtype=None):
    """Export a (hybridizable) embedding network for deployment: ``prefix-symbol.json`` and
    ``prefix-%04d.params``. Returns the two paths. Input name ``data``, (N, 3, H, W) float32.
    ``dtype`` 'bfloat16' exports a graph whose backbone computes in bfloat16 (float32 weights,
    input and output; for CPUs with AVX512-BF16 or AMX); default: as ``net`` computes.
    """
    if not isinstance(net, gluon.HybridBlock):
        raise TypeError('only a HybridBlock can be exported, got %s' % type(net).__name__)
    if dtype is None:
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


def _symbol_nodes(sym):
    return json.loads(sym.tojson(remove_amp_cast=False))['nodes']


def _takes_pixels_0_255(nodes):
    """Whether the graph normalises 0-255 pixels itself: InsightFace's ``data - 127.5`` then
    ``* 0.0078125`` (or any subtract/multiply by scalars right after the input)."""
    by_input = {}
    for i, node in enumerate(nodes):
        for src in node.get('inputs', []):
            by_input.setdefault(src[0], []).append(i)
    data = [i for i, n in enumerate(nodes) if n['op'] == 'null' and n['name'] == 'data']
    if not data:
        return False
    ops = [nodes[i] for i in by_input.get(data[0], [])]
    return any(n['op'] in ('_minus_scalar', '_mul_scalar', '_div_scalar') and
               float(n.get('attrs', n.get('param', {})).get('scalar', 0)) >= 1.0
               for n in ops)


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


def load_embedding_net(prefix, ctx=None, epoch=0):
    """Load an exported embedding network or an InsightFace MXNet checkpoint.

    ``prefix``: ``PREFIX`` of ``PREFIX-symbol.json`` + ``PREFIX-%04d.params`` (``epoch``).
    Returns a block for the package's input (RGB float32 (N, 3, H, W) in [0, 1]) giving raw
    embeddings (N, D): the model itself, or, for a model that takes RGB 0-255 (InsightFace's:
    detected from ``model.json`` beside it or from the normalisation at the head of its graph),
    a :class:`PixelRange` around it. The embedding is the internal ``fc1_output`` when the
    symbol goes beyond it. The block has ``input_range`` (255 or 1) and ``source`` attributes.
    """
    ctx = as_contexts(ctx)[0]
    sym_path, params_path = prefix + '-symbol.json', prefix + '-%04d.params' % epoch
    for path in (sym_path, params_path):
        if not os.path.isfile(path):
            raise FileNotFoundError('%s: exported model file not found' % path)
    try:
        with open(sym_path, encoding='utf-8') as f:
            legacy = not json.load(f).get('attrs', {}).get('is_np_shape')
        sym = mx.sym.load(sym_path)
    except Exception as e:  # noqa: BLE001 - MXNet reports bad JSON variously
        raise CheckpointError('%s is not an MXNet symbol file: %s'
                              % (sym_path, str(e).splitlines()[0][:200])) from None
    if 'data' not in sym.list_inputs():
        raise CheckpointError('%s: a face model takes an input named "data"; this one takes %s'
                              % (sym_path, ', '.join(sym.list_arguments()[:4])))
    sym = _embedding_output(sym, sym_path)
    info = read_model_info(prefix) or {}
    if 'input' in info:
        range_255 = '0-255' in info['input'] or '0, 255' in info['input']
    else:
        range_255 = _takes_pixels_0_255(_symbol_nodes(sym))
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


def _structural(name):
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


def faceresnet_from_insightface(prefix, epoch=0, ctx=None, use_dropout=False):
    """A :class:`~gluon_arcface.model.FaceResNet` holding an InsightFace IR-ResNet checkpoint.

    The network computes the checkpoint's ``fc1`` embedding from the package's [0, 1] input:
    ``input_norm`` reproduces InsightFace's pixel normalisation, and the 'E' head's final
    BatchNorm (``fc1``, fix_gamma) is folded into the embedding layer (same function in
    predict mode). Returns ``(net, info)`` with ``info`` = dict(num_layers, emb_size,
    input_norm). Raises CheckpointError when the checkpoint is not such a network.
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
    weight = params['pre_fc1_weight'].asnumpy()
    bias = params.get('pre_fc1_bias')
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias.asnumpy()
    if 'fc1_moving_var' in params:  # fold BatchNorm(fix_gamma=True): y = (z - mean) / std + beta
        std = np.sqrt(params['fc1_moving_var'].asnumpy() + BN_EPS)
        beta = params['fc1_beta'].asnumpy() if 'fc1_beta' in params else 0.0
        bias = (bias - params['fc1_moving_mean'].asnumpy()) / std + beta
        weight = weight / std[:, None]
    ctx = as_contexts(ctx)[0]
    net = FaceResNet(faceresnet_spec(depth), weight.shape[0], use_dropout,
                     input_norm=INSIGHTFACE_INPUT_NORM)
    names = insightface_names(units, fc1_bn=False)
    for name, param in net._collect_params_with_prefix().items():
        theirs = names[_structural(name)]
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
                     input_norm=list(INSIGHTFACE_INPUT_NORM))


def ir_symbol(units, emb_size, fc1_bn=True, pixel_sub=127.5, pixel_mul=0.0078125):
    """The legacy MXNet symbol of an IR ResNet with InsightFace's names (``fresnet.py``,
    unit v3): input ``data`` (N, 3, H, W); ``(data - pixel_sub) * pixel_mul`` first; output
    ``fc1`` (the 'E' head's BatchNorm) when ``fc1_bn``, else ``pre_fc1``."""
    sym = mx.sym

    def bn(x, name, fix_gamma=False):
        return sym.BatchNorm(x, fix_gamma=fix_gamma, eps=BN_EPS, momentum=0.9, name=name)

    def conv(x, channels, kernel, stride, pad, name):
        return sym.Convolution(x, num_filter=channels, kernel=kernel, stride=stride, pad=pad,
                               no_bias=True, name=name)

    body = (sym.var('data') - pixel_sub) * pixel_mul
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


# ----------------------------------------------------------------------------- ONNX

ONNX_OPSET = 13  # MXNet 1.9.1's converters go up to opset 13


def export_onnx(net, path, image_size=(112, 112)):
    """Write ``net``'s embedding network as an ONNX model for onnxruntime and insightface.

    ``net``: a TestBlock, TrainBlock, FeatBlock or FaceResNet (its FaceResNet is exported).
    The model takes one input ``data``: RGB float32 (N, 3, H, W) with pixel values 0-255, the
    batch size free and (H, W) = ``image_size`` fixed; its first nodes are a ``Sub`` and a
    ``Mul`` (the pixel normalisation), which tells insightface's ``ArcFaceONNX`` to feed raw
    0-255 RGB; one output ``embedding`` (N, D), not normalised. The graph is the plain IR ResNet
    (PReLU, BatchNorm, convolutions), exported through MXNet's own ONNX exporter at opset 13 and
    repaired where it errs (PReLU slope shapes, weights listed as inputs). Returns ``path``;
    the file passes ``onnx.checker.check_model(full_check=True)``.
    """
    import onnx
    from onnx import helper, numpy_helper
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    backbone = backbone_of(net)
    if backbone is None:
        raise TypeError('export_onnx takes a TestBlock, FaceResNet, TrainBlock or FeatBlock; got '
                        '%s (an exported or InsightFace model: interop.faceresnet_from_model)'
                        % type(net).__name__)
    units = backbone.units
    mean, scale = backbone.input_norm or (0.0, 1.0)
    # Package input x in [0, 1] -> (x - mean) * scale; on 0-255 pixels p = 255 x:
    # (p - 255 mean) * (scale / 255).
    sym = ir_symbol(units, backbone.emb_size, fc1_bn=False, pixel_sub=255.0 * mean,
                    pixel_mul=scale / 255.0)
    names = insightface_names(units, fc1_bn=False)
    params = {}
    for name, param in backbone._collect_params_with_prefix().items():
        value = param.data().asnumpy()
        params[names[_structural(name)]] = mx.nd.array(value)
    graph = MXNetGraph().create_onnx_graph_proto(
        sym, params, [(1, 3) + tuple(image_size)],
        [onnx.TensorProto.FLOAT], opset_version=ONNX_OPSET, dynamic=True,
        dynamic_input_shapes=[(None, 3) + tuple(image_size)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', ONNX_OPSET)],
                              producer_name='gluon_arcface')
    model.ir_version = 7  # what opset 13 goes with
    _repair_onnx(model, numpy_helper)
    graph = model.graph
    for node, name in zip(graph.node[:2], ('Sub_pixels', 'Mul_pixels')):
        assert node.op_type == name[:3]  # the pixel normalisation comes first
        node.name = name  # what insightface looks for among the first nodes
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = 'batch'
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = 'batch'
    graph.output[0].name, old_output = 'embedding', graph.output[0].name
    for node in graph.node:
        node.output[:] = ['embedding' if o == old_output else o for o in node.output]
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = backbone.emb_size
    for key, value in (('input', 'data: RGB float32 (N, 3, H, W), pixel values 0-255'),
                       ('output', 'embedding: float32 (N, D), not L2-normalised'),
                       ('image_size', '%dx%d' % tuple(image_size)),
                       ('producer', 'gluon_arcface')):
        helper.set_model_props(model, dict(
            [(p.key, p.value) for p in model.metadata_props], **{key: value}))
    onnx.checker.check_model(model, full_check=True)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_write(path) as tmp:
        onnx.save(model, tmp)
    return path


def _repair_onnx(model, numpy_helper):
    """What MXNet 1.9.1's exporter gets wrong: PReLU slopes of shape (C,) (onnxruntime needs
    (C, 1, 1) to broadcast over NCHW), and every weight also listed as a graph input."""
    graph = model.graph
    slopes = {node.input[1] for node in graph.node if node.op_type == 'PRelu'}
    for init in graph.initializer:
        if init.name in slopes:
            value = numpy_helper.to_array(init)
            if value.ndim == 1:
                init.CopyFrom(numpy_helper.from_array(value.reshape(-1, 1, 1), init.name))
    weights = {init.name for init in graph.initializer}
    keep = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(keep)


class OnnxEmbeddingNet:
    """An ONNX face model (:func:`export_onnx`'s, or any with one RGB 0-255 input) run by
    onnxruntime, called like the package's blocks: ``net(x)`` with x (N, 3, H, W) in [0, 1]
    (an ``mxnet.np`` or numpy array) returns ``mxnet.np`` embeddings (N, D)."""

    def __init__(self, path, threads=None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options,
                                                providers=['CPUExecutionProvider'])
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors for unreadable files
            raise CheckpointError('%s: onnxruntime cannot load it: %s'
                                  % (path, str(e).splitlines()[0][:300])) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError('%s: a face model has one (N, 3, H, W) input and one output; '
                                  'this one has %d input(s) %s and %d output(s)'
                                  % (path, len(inputs), [i.shape for i in inputs],
                                     len(outputs)))
        self.input_name = inputs[0].name
        self.image_size = tuple(inputs[0].shape[2:4])
        self.source, self.input_range = path, 255

    def __call__(self, x):
        x = x.asnumpy() if hasattr(x, 'asnumpy') else np.asarray(x)
        if tuple(x.shape[2:4]) != self.image_size:
            raise ValueError('%s takes %sx%s images, got %sx%s' % (
                (self.source,) + self.image_size + tuple(x.shape[2:4])))
        out = self.session.run(None, {self.input_name: (x * 255.0).astype(np.float32)})[0]
        return mnp.array(out)


def load_onnx(path, threads=None):
    """An :class:`OnnxEmbeddingNet` for ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError('%s: ONNX model not found' % path)
    return OnnxEmbeddingNet(path, threads)


def write_model_info(folder, image_size, emb_size, num_layers, cos_threshold=None,
                     input_norm=None):
    """``model.json`` of an exported model: input convention, size, embedding size, the
    backbone's ``input_norm`` and the verified decision thresholds (cosine)."""
    return write_json(os.path.join(folder, MODEL_INFO), dict(
        image_size=list(image_size), emb_size=emb_size, num_layers=num_layers,
        cos_threshold=cos_threshold or {}, input=PACKAGE_INPUT,
        input_norm=list(input_norm) if input_norm else None))


# ----------------------------------------------------------------------------- any model

def _model_image_size(prefix, params_path):
    """(H, W) an exported or InsightFace model takes: model.json, else from the embedding
    layer's input size (512 channels at 1/16 of the side, square)."""
    info = read_model_info(prefix) or {}
    if info.get('image_size'):
        return tuple(info['image_size'])
    params = _load_params(params_path)
    for name, value in params.items():
        if name.endswith(('pre_fc1_weight', 'dense0_weight')) and value.ndim == 2:
            side = int(round((value.shape[1] / 512) ** 0.5)) * 16
            if 512 * (side // 16) ** 2 == value.shape[1]:
                return side, side
    return 112, 112


def load_face_model(spec, ctx=None, epoch=None):
    """Any face model the package can run, from one string -> ``(net, image_size, source)``.

    ``spec``: a run folder of scripts/train.py (its exported ``model/``), an exported model or
    InsightFace checkpoint (``PREFIX``, ``PREFIX-symbol.json``, ``PREFIX-0000.params`` or
    ``PREFIX,EPOCH``), or an ``.onnx`` file. ``net`` takes the package's input (RGB float32
    (N, 3, H, W) in [0, 1]) and returns raw embeddings; ``image_size`` is the (H, W) it
    expects. CheckpointError when the file is not a face model (one 4-D input, embeddings out).
    """
    spec = os.fspath(spec)
    if spec.lower().endswith('.onnx'):
        net = load_onnx(spec)
        return net, net.image_size, spec
    if ',' in spec and epoch is None and spec.rsplit(',', 1)[1].isdigit():
        spec, epoch = spec.rsplit(',', 1)
        epoch = int(epoch)
    if os.path.isdir(spec):
        symbols = sorted(glob.glob(os.path.join(glob.escape(spec), 'model', '*-symbol.json')))
        if not symbols:
            raise CheckpointError('%s: no exported model in %s/model (a run with --no-export?)'
                                  % (spec, spec))
        spec = symbols[0]
    match = re.match(r'^(.*)-(\d{4})\.params$', spec)
    if match:
        spec, epoch = match.group(1), int(match.group(2))
    if spec.endswith('-symbol.json'):
        spec = spec[:-len('-symbol.json')]
    if epoch is None:
        found = sorted(glob.glob(glob.escape(spec) + '-[0-9][0-9][0-9][0-9].params'))
        epoch = int(found[-1][-11:-7]) if found else 0
    net = load_embedding_net(spec, ctx, epoch)
    image_size = _model_image_size(spec, spec + '-%04d.params' % epoch)
    _check_face_model(net, image_size, spec + '-symbol.json', ctx)
    return net, image_size, spec


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


def faceresnet_from_model(spec, ctx=None):
    """A :class:`~gluon_arcface.model.FaceResNet` holding a trained model -> ``(net,
    image_size)``: a run folder or an exported model of this package (its ``model.json`` gives
    depth, embedding size, input size and normalisation), or an InsightFace IR-ResNet
    checkpoint (``PREFIX`` or ``PREFIX,EPOCH``). What :func:`export_onnx` and fine-tuning take.
    """
    from .pretrained import find_backbone_file, load_backbone
    spec = os.fspath(spec)
    epoch = None
    if ',' in spec and spec.rsplit(',', 1)[1].isdigit():
        spec, epoch = spec.rsplit(',', 1)
        epoch = int(epoch)
    if os.path.isdir(spec):
        symbols = sorted(glob.glob(os.path.join(glob.escape(spec), 'model', '*-symbol.json')))
        if not symbols:
            raise CheckpointError('%s: no exported model in %s/model' % (spec, spec))
        spec = symbols[0][:-len('-symbol.json')]
    if epoch is not None:
        spec = '%s-%04d.params' % (spec, epoch)
    path, kind = find_backbone_file(spec)
    stem = re.sub(r'-\d{4}\.params$', '', path)
    if kind == 'insightface':
        net, _ = faceresnet_from_insightface(stem, int(path[-11:-7]), ctx)
        return net, _model_image_size(stem, path)
    info = read_model_info(stem) or {}
    if not {'num_layers', 'emb_size', 'image_size'} <= set(info):
        raise CheckpointError('%s: model.json with num_layers, emb_size and image_size is '
                              'needed beside the model to rebuild it' % path)
    net = FaceResNet(faceresnet_spec(info['num_layers']), info['emb_size'],
                     input_norm=info.get('input_norm'))
    net.initialize(ctx=as_contexts(ctx)[0])
    load_backbone(net, path)
    return net, tuple(info['image_size'])


def compare_onnx(net, path, image_size, num_images=8, seed=0):
    """``(largest |onnxruntime - MXNet|, largest |embedding|)`` of ``net`` and its ONNX export
    on ``num_images`` smooth random face-sized images (pixel values 0-255)."""
    rng = np.random.RandomState(seed)
    low = rng.uniform(0, 255, size=(num_images, 3, 8, 8)).astype(np.float32)
    images = np.repeat(np.repeat(low, image_size[0] // 8 + 1, axis=2),
                       image_size[1] // 8 + 1, axis=3)[:, :, :image_size[0], :image_size[1]]
    images = np.clip(images + rng.normal(0, 8, images.shape), 0, 255).astype(np.float32)
    from .verification import compute_embeddings
    ours = compute_embeddings([images / 255.0], net, batch_size=num_images, fast=False)
    theirs = compute_embeddings([images / 255.0], load_onnx(path), batch_size=num_images)
    return float(np.abs(ours - theirs).max()), float(np.abs(ours).max())
