"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as a Gluon block.

The network is ``anet_type`` of dlib's examples/dnn_face_recognition_ex.cpp, trained by Davis
King on about 3 million faces (99.38 % on LFW): 7x7/2 convolution (32 filters), affine, ReLU,
3x3/2 max pool, residual units of 32, 64, 128 and 256 filters (3, 4, 3, 3 and 1 units; the first
unit of each new width, and the last, downsample: a strided 3x3 convolution beside a 2x2 average
pool of the input, whose missing channels and rows count as zeros), global average pool and a
128-d fully connected layer without bias. Its BatchNorm layers were frozen into per-channel
affine layers; here they stay fixed (``grad_req='null'``).

:class:`DlibResNet` takes the package's input (RGB float32 (N, 3, H, W) in [0, 1]) and does
dlib's normalisation in the graph: ``(255 x - mean_rgb) / 256``. With ``input_size`` set it
first resamples the input (a 112x112 ArcFace crop, say) onto the network's face chip by a
fixed separable bilinear map (``geometry``): ``'resize'`` stretches the crop, ``'dlib-chip'``
maps the ArcFace landmark template onto dlib's chip template (150x150, padding 0.25), so the face
sits where dlib's own alignment puts it; ``None`` runs the network on the input as it is.

:func:`load_dlib_resnet` reads the .dat once (:mod:`gluon_arcface.nn.dlib_dat`), caches the
converted parameters under ``$GLUON_ARCFACE_HOME/models/`` keyed by the file's SHA-1, and
returns the block; :func:`export_dlib_onnx` writes it as an ONNX model.
"""
import logging
import os
import re

import numpy as np

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import init, npx
from mxnet.gluon import nn

from ..data.align import ARCFACE_TEMPLATE
from .dlib_dat import read_dat
from ..runtime.errors import CheckpointError
from ..runtime.fileio import atomic_write
from .model import _blocks

__all__ = ['DLIB_MEAN_RGB', 'DLIB_CHIP_SIZE', 'DLIB_CHIP_TEMPLATE', 'GEOMETRIES',
           'dlib_architecture', 'DlibResNet', 'geometry_map', 'load_dlib_resnet',
           'convert_dat', 'models_home', 'export_dlib_onnx']

_log = logging.getLogger(__name__)
_CONSTANTS = ('rows', 'cols', 'input_mean')  # fixed by the block's settings, not weights

DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # input_rgb_image_sized's, also in the file
DLIB_CHIP_SIZE = 150
#: Where ArcFace's five landmarks (eye centres, nose tip, mouth corners) fall in dlib's
#: 150x150 chip (get_face_chip_details, padding 0.25): dlib's mean face shape (points 36-41,
#: 42-47, 30, 48, 54) mapped as dlib maps it, (p + 0.25) / 1.5 * 150.
DLIB_CHIP_TEMPLATE = np.array([[47.5492, 46.5990],
                               [100.4761, 46.5990],
                               [74.0127, 76.5625],
                               [50.4149, 103.0233],
                               [97.6104, 103.0233]], dtype=np.float64)
GEOMETRIES = ('dlib-chip', 'resize', None)

# Residual units in forward order: (filters, downsampling).
_UNITS = ([(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)]
          + [(128, False)] * 2 + [(256, True)] + [(256, False)] * 2 + [(256, True)])


def dlib_architecture():
    """``anet_type`` as :func:`~gluon_arcface.nn.dlib_dat.read_dat` reads it: wrappers from the
    output inwards (``('layer', kind)``, ``('tag', id)``, ``('skip', id)``)."""
    def layer(kind):
        return ('layer', kind)

    def block(stride_sub):  # BN<con<N,3,3,1,1,relu<BN<con<N,3,3,s,s,SUBNET>>>>>
        return [layer('affine'), layer('con'), layer('relu'), layer('affine'),
                layer('con')] + stride_sub

    wrappers = [layer('fc'), layer('avg_pool')]
    for _filters, down in reversed(_UNITS):
        if down:  # relu<add_prev2<avg_pool<skip1<tag2<block<tag1<SUBNET>>>>>>>
            wrappers += [layer('relu'), layer('add_prev'), layer('avg_pool'), ('skip', 1),
                         ('tag', 2)] + block([('tag', 1)])
        else:  # relu<add_prev1<block<tag1<SUBNET>>>>
            wrappers += [layer('relu'), layer('add_prev')] + block([('tag', 1)])
    return wrappers + [layer('max_pool'), layer('relu'), layer('affine'), layer('con')]


class _Affine(nn.HybridBlock):
    """dlib's affine layer (a frozen BatchNorm): ``x * gamma + beta`` per channel."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.gamma = self.params.get('gamma', shape=(channels,), init=init.One(),
                                         grad_req='null')
            self.beta = self.params.get('beta', shape=(channels,), init=init.Zero(),
                                        grad_req='null')

    def hybrid_forward(self, F, x, gamma, beta):
        return x * gamma.reshape((1, -1, 1, 1)) + beta.reshape((1, -1, 1, 1))


class _Unit(nn.HybridBlock):
    """One residual unit: relu(block(x) + skip(x)), dlib's zero-padded sum."""

    def __init__(self, filters, in_filters, down, side, **kwargs):
        super().__init__(**kwargs)
        self.down, self.pad_channels = down, filters - in_filters
        if self.pad_channels not in (0, in_filters):
            raise ValueError('a unit widens by a factor 2 or not at all')
        # A strided 3x3 convolution without padding gives one row less than the 2x2 average
        # pool on an even side: dlib adds the smaller tensor as if padded with zeros.
        self.pad_rows = down and side % 2 == 0
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(filters, 3, strides=2 if down else 1,
                                    padding=0 if down else 1, in_channels=in_filters),
                          _Affine(filters), nn.Activation('relu'),
                          nn.Conv2D(filters, 3, padding=1, in_channels=filters),
                          _Affine(filters))
            if down:
                self.pool = nn.AvgPool2D(2, 2)

    def hybrid_forward(self, F, x):
        y = self.body(x)
        skip = x
        if self.down:
            skip = self.pool(x)
            if self.pad_channels:
                skip = F.np.concatenate([skip, F.np.zeros_like(skip)], axis=1)
            if self.pad_rows:
                y = F.np.concatenate([y, F.np.zeros_like(y[:, :, :1, :])], axis=2)
                y = F.np.concatenate([y, F.np.zeros_like(y[:, :, :, :1])], axis=3)
        return F.npx.relu(y + skip)


def _side_after(side, kernel, stride, padding=0):
    return (side + 2 * padding - kernel) // stride + 1


def _interp_matrix(out_size, in_size, scale, offset, clamp=False):
    """(out_size, in_size) bilinear weights sampling input pixel ``(i - offset) / scale`` for
    output pixel i (pixel centres at integers); zero outside the input, or the nearest edge
    pixel with ``clamp``."""
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        src = (i - offset) / scale
        if clamp:
            src = min(max(src, 0.0), in_size - 1.0)
        lo = int(np.floor(src))
        frac = src - lo
        for j, w in ((lo, 1.0 - frac), (lo + 1, frac)):
            if 0 <= j < in_size and w > 0:
                m[i, j] += w
    return m.astype(np.float32)


def geometry_map(geometry, input_size, chip_size=DLIB_CHIP_SIZE):
    """``(rows, cols)``: bilinear matrices (chip, H) and (chip, W) with chip = rows @ img @
    cols.T for an ArcFace crop of ``input_size`` (H, W), or None for ``geometry`` None."""
    if geometry is None:
        return None
    height, width = input_size
    if geometry == 'resize':  # pixel centres aligned: src = (i + 0.5) * in / out - 0.5
        sy, sx = chip_size / height, chip_size / width
        return (_interp_matrix(chip_size, height, sy, 0.5 * sy - 0.5, clamp=True),
                _interp_matrix(chip_size, width, sx, 0.5 * sx - 0.5, clamp=True))
    if geometry == 'dlib-chip':
        # Least-squares scale and shift per axis (the templates are upright and symmetric):
        # chip = s * crop + t, on the ArcFace template scaled to this crop.
        src = ARCFACE_TEMPLATE.astype(np.float64) * (np.array([width, height]) / 112.0)
        dst = DLIB_CHIP_TEMPLATE * (chip_size / float(DLIB_CHIP_SIZE))
        centred = src - src.mean(0)
        s = float((centred * (dst - dst.mean(0))).sum() / (centred ** 2).sum())
        t = dst.mean(0) - s * src.mean(0)
        return (_interp_matrix(chip_size, height, s, t[1]),
                _interp_matrix(chip_size, width, s, t[0]))
    raise ValueError('geometry must be one of %s, got %r' % (GEOMETRIES, geometry))


class DlibResNet(nn.HybridBlock):
    """dlib's face recognition ResNet: (N, 3, H, W) RGB float32 in [0, 1] -> (N, 128).

    ``input_size`` (H, W) and ``geometry`` ('dlib-chip', 'resize' or None): how an input crop
    becomes the network's ``chip_size`` x ``chip_size`` face (module notes); without a
    geometry the network runs on the input's own size (the pool is global). ``mean_rgb``:
    dlib's input means (0-255). Parameters start uninitialised: :func:`load_dlib_resnet` fills
    them with dlib's weights.
    """

    def __init__(self, input_size=(DLIB_CHIP_SIZE, DLIB_CHIP_SIZE), geometry=None,
                 chip_size=DLIB_CHIP_SIZE, mean_rgb=DLIB_MEAN_RGB, **kwargs):
        super().__init__(**kwargs)
        self.input_size, self.geometry = tuple(int(v) for v in input_size), geometry
        self.chip_size = int(chip_size) if geometry else self.input_size[0]
        self.emb_size, self.mean_rgb = 128, tuple(float(v) for v in mean_rgb)
        maps = geometry_map(geometry, self.input_size, self.chip_size)
        side = self.chip_size
        with self.name_scope():
            if maps is not None:
                self.rows = self.params.get_constant('rows', maps[0])
                self.cols = self.params.get_constant('cols', maps[1])
            mean = np.array(self.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
            self.input_mean = self.params.get_constant('input_mean', mean)
            self.stem = nn.HybridSequential()
            self.stem.add(nn.Conv2D(32, 7, strides=2, in_channels=3), _Affine(32),
                          nn.Activation('relu'), nn.MaxPool2D(3, 2))
            side = _side_after(_side_after(side, 7, 2), 3, 2)
            self.units = nn.HybridSequential()
            in_filters = 32
            for filters, down in _UNITS:
                self.units.add(_Unit(filters, in_filters, down, side))
                if down:
                    side = _side_after(side, 2, 2)
                in_filters = filters
            self.pool = nn.GlobalAvgPool2D()
            self.fc = nn.Dense(128, use_bias=False, in_units=256)

    def hybrid_forward(self, F, x, input_mean, rows=None, cols=None):
        if rows is not None:
            x = F.np.matmul(F.np.matmul(rows, x), F.np.swapaxes(cols, 0, 1))
        x = (x * 255.0 - input_mean) * (1.0 / 256.0)
        return self.fc(self.pool(self.units(self.stem(x))))

    def describe(self):
        """The block's settings as ``model.json`` records them."""
        return dict(backbone='dlib-resnet-v1', input_size=list(self.input_size),
                    geometry=self.geometry, chip_size=self.chip_size,
                    mean_rgb=list(self.mean_rgb), emb_size=self.emb_size)


# ----------------------------------------------------------------------------- weights

def _layer_targets(net):
    """The block's layers in dlib's forward order: (kind, block)."""
    stem = list(net.stem)
    out = [('con', stem[0]), ('affine', stem[1]), ('relu', None), ('max_pool', None)]
    for unit in net.units:
        body = list(unit.body)
        out += [('con', body[0]), ('affine', body[1]), ('relu', None), ('con', body[3]),
                ('affine', body[4])]
        out += ([('avg_pool', None)] if unit.down else []) + [('add_prev', None), ('relu', None)]
    return out + [('avg_pool', None), ('fc', net.fc)]


def _arrays_from_dat(path):
    """``{structural parameter name: float32 array}`` and the input means of a dlib .dat."""
    model = read_dat(path, dlib_architecture())
    net = DlibResNet()
    targets = _layer_targets(net)
    layers = model['layers']
    kinds = [k for k, _ in targets]
    if [layer['kind'] for layer in layers] != kinds:
        raise CheckpointError('%s: %d layers that are not dlib-resnet-v1\'s %d'
                              % (path, len(layers), len(kinds)))
    names = {p.name: n for n, p in net._collect_params_with_prefix().items()}
    arrays = {}
    for (kind, block), layer in zip(targets, layers):
        if block is None:
            continue
        params = {k.rsplit('_', 1)[-1]: p for k, p in block.params.items()}
        for field in ('weight', 'bias', 'gamma', 'beta'):
            value = layer.get(field)
            if value is None:
                continue
            param = params.get(field)
            if param is None or tuple(param.shape) != value.shape:
                raise CheckpointError('%s: %s layer %s has shape %s, dlib-resnet-v1 needs %s'
                                      % (path, kind, field, value.shape,
                                         None if param is None else param.shape))
            arrays[names[param.name]] = value
    return arrays, model['input']['mean_rgb']


def models_home():
    """Where converted models are kept: ``$GLUON_ARCFACE_HOME/models`` or
    ``~/.gluon_arcface/models``."""
    home = os.environ.get('GLUON_ARCFACE_HOME')
    return os.path.join(os.path.expanduser(home or '~/.gluon_arcface'), 'models')


def convert_dat(path, cache_dir=None):
    """Convert a dlib .dat to MXNet parameters once: ``cache_dir/dlib-resnet-v1-SHA1.params``
    (written atomically; later calls load it). Returns the .params path."""
    from ..data.hub import file_sha1
    cache_dir = cache_dir or models_home()
    target = os.path.join(cache_dir, 'dlib-resnet-v1-%s.params' % file_sha1(path)[:16])
    if os.path.isfile(target):
        return target
    arrays, mean = _arrays_from_dat(path)
    if tuple(round(m, 3) for m in mean) != DLIB_MEAN_RGB:
        raise CheckpointError('%s: input means %s, dlib-resnet-v1 has %s'
                              % (path, mean, DLIB_MEAN_RGB))
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_write(target) as tmp:
        npx.save(tmp, {k: mx.np.array(v) for k, v in arrays.items()})
    _log.info('converted %s to %s', path, target)
    return target


def load_dlib_resnet(path, ctx=None, cache_dir=None, **settings):
    """A :class:`DlibResNet` (``settings``: its keyword arguments) holding the weights of the
    dlib .dat ``path``, converted once and cached (:func:`convert_dat`)."""
    from ..runtime.devices import as_contexts
    params = convert_dat(path, cache_dir)
    net = DlibResNet(**settings)
    net.initialize(ctx=as_contexts(ctx))
    return load_weights(net, params)


def find_dlib_resnet(net):
    """The DlibResNet in ``net`` (itself, or a TrainBlock's / TestBlock's backbone), or None."""
    if not hasattr(net, '_children'):
        return None
    return next((b for b in _blocks(net) if isinstance(b, DlibResNet)), None)


def _structural(name):
    """A DlibResNet parameter's name relative to the network, from a converted file, a
    TrainBlock checkpoint (``feat_net.0.`` first) or an export (``...dlibresnet0_`` first)."""
    name = name.split(':', 1)[-1]
    return name[len('feat_net.0.'):] if name.startswith('feat_net.0.') else name


def load_weights(net, params_path):
    """Copy DlibResNet weights into the DlibResNet of ``net``: converted dlib weights, a
    checkpoint of a TrainBlock built on one, or an exported one. Returns ``net``."""
    found = find_dlib_resnet(net)
    if found is None:
        raise TypeError('%s has no DlibResNet' % type(net).__name__)
    try:
        arrays = {_structural(k): v for k, v in npx.load(params_path).items()}
    except Exception as e:  # noqa: BLE001 - MXNet reports unreadable files variously
        raise CheckpointError('%s is unreadable (truncated or not an MXNet parameter file): %s'
                              % (params_path, str(e).splitlines()[0][:200])) from None
    by_name = {p.name[len(found.prefix):]: n
               for n, p in found._collect_params_with_prefix().items()}
    exported = {by_name.get(re.sub(r'^.*?dlibresnet\d+_', '', k)): v for k, v in arrays.items()
                if 'dlibresnet' in k}
    arrays.update({k: v for k, v in exported.items() if k})
    for name, param in found._collect_params_with_prefix().items():
        if name.endswith(_CONSTANTS):
            continue
        if name not in arrays:
            raise CheckpointError('%s lacks %s: not dlib-resnet-v1 weights' % (params_path, name))
        if tuple(arrays[name].shape) != tuple(param.shape):
            raise CheckpointError('%s: %s has shape %s, the network needs %s'
                                  % (params_path, name, arrays[name].shape, param.shape))
        for ctx in param.list_ctx():
            param.data(ctx)[:] = arrays[name].as_in_context(ctx)
    return net


def dlib_resnet_from_file(path, settings, ctx=None):
    """A DlibResNet built with ``settings`` (``describe()``'s, from model.json) holding the
    weights of ``path`` (a run's checkpoint or an exported model's parameters)."""
    from ..runtime.devices import as_contexts
    keys = ('input_size', 'geometry', 'chip_size', 'mean_rgb')
    net = DlibResNet(**{k: settings[k] for k in keys if k in settings})
    net.initialize(ctx=as_contexts(ctx))
    return load_weights(net, path)


# ----------------------------------------------------------------------------- ONNX

def export_dlib_onnx(net, path):
    """Write a :class:`DlibResNet` as an ONNX model (opset 13): input ``data`` RGB float32
    (N, 3, H, W) with pixel values 0-255 (as the package's other ONNX exports), output
    ``embedding`` (N, 128), not normalised. Returns ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(x, block, name):
        weight = block.weight.data().asnumpy()
        kh = weight.shape[2]
        stride, pad = block._kwargs['stride'][0], block._kwargs['pad'][0]
        return node('Conv', [x, const(name + '_w', weight),
                             const(name + '_b', block.bias.data().asnumpy())], name,
                    kernel_shape=[kh, kh], strides=[stride, stride], pads=[pad] * 4)

    def affine(x, block, name):
        gamma = block.gamma.data().asnumpy().reshape(1, -1, 1, 1)
        beta = block.beta.data().asnumpy().reshape(1, -1, 1, 1)
        return node('Add', [node('Mul', [x, const(name + '_g', gamma)], name + '_mul'),
                            const(name + '_b', beta)], name)

    x = 'data'
    params = {n: p.data().asnumpy() for n, p in net.params.items()}
    if net.geometry:
        rows = [v for k, v in params.items() if k.endswith('rows')][0]
        cols = [v for k, v in params.items() if k.endswith('cols')][0]
        x = node('MatMul', [const('rows', rows), x], 'resample_rows')
        x = node('MatMul', [x, const('cols_t', cols.T)], 'resample_cols')
    # Pixel normalisation first, named as insightface looks for it (Sub, then Mul).
    mean = np.array(net.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
    x = node('Sub', [x, const('mean_rgb', mean)], 'Sub_pixels')
    x = node('Mul', [x, const('inv_256', np.float32(1.0 / 256.0))], 'Mul_pixels')
    stem = list(net.stem)
    x = conv(x, stem[0], 'conv0')
    x = node('Relu', [affine(x, stem[1], 'affine0')], 'relu0')
    x = node('MaxPool', [x], 'pool0', kernel_shape=[3, 3], strides=[2, 2])
    for i, unit in enumerate(net.units):
        body, name = list(unit.body), 'unit%d' % i
        y = conv(x, body[0], name + '_conv1')
        y = node('Relu', [affine(y, body[1], name + '_affine1')], name + '_relu1')
        y = affine(conv(y, body[3], name + '_conv2'), body[4], name + '_affine2')
        skip = x
        if unit.down:
            skip = node('AveragePool', [x], name + '_pool', kernel_shape=[2, 2], strides=[2, 2])
            if unit.pad_channels:
                pads = [0, 0, 0, 0, 0, unit.pad_channels, 0, 0]  # begins, then ends
                skip = node('Pad', [skip, const(name + '_cpad', pads, np.int64)],
                            name + '_skip_pad', mode='constant')
            if unit.pad_rows:
                y = node('Pad', [y, const(name + '_rpad', [0, 0, 0, 0, 0, 0, 1, 1], np.int64)],
                         name + '_body_pad', mode='constant')
        x = node('Relu', [node('Add', [y, skip], name + '_sum')], name + '_out')
    x = node('GlobalAveragePool', [x], 'gap')
    x = node('Flatten', [x], 'flatten', axis=1)
    weight = net.fc.weight.data().asnumpy()
    node('MatMul', [x, const('fc_wt', weight.T)], 'embedding')
    h, w = net.input_size
    graph = helper.make_graph(
        nodes, 'dlib_resnet_v1',
        [helper.make_tensor_value_info('data', TensorProto.FLOAT, ['batch', 3, h, w])],
        [helper.make_tensor_value_info('embedding', TensorProto.FLOAT, ['batch', 128])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)],
                              producer_name='gluon_arcface')
    model.ir_version = 7
    helper.set_model_props(model, {
        'input': 'data: RGB float32 (N, 3, H, W), pixel values 0-255',
        'output': 'embedding: float32 (N, 128), not L2-normalised',
        'image_size': '%dx%d' % (h, w), 'producer': 'gluon_arcface',
        'model': 'dlib-resnet-v1'})
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        onnx.save(model, tmp)
    return path
