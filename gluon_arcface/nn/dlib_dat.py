"""dlib's serialised deep networks (``.dat``), read in pure Python and NumPy.

dlib writes a network as nested objects (dlib/dnn/core.h): each ``add_layer`` writes its version,
then the network below it, then its own layer (a version string and fields, dlib/dnn/layers.h)
and some training state; tag and skip layers write a version and the network below; the input
layer (dlib/dnn/input.h) comes innermost and the loss layer (dlib/dnn/loss.h) outermost. Integers
and strings follow dlib/serialize.h (a length byte, then little-endian bytes; a string is its
length, then its characters), floating-point fields are a mantissa and a base-2 exponent, and
tensor data are 4-byte little-endian IEEE floats (dlib/dnn/tensor.h).

The file does not say how layers connect (tags and skips are template parameters of the C++
type), so :func:`read_dat` reads it against an expected architecture: a list of wrappers from
the output inwards, e.g. ``[('layer', 'fc'), ('layer', 'relu'), ('tag', 1), ...]``. A file that
does not match, is truncated or holds an unknown layer raises :class:`DatError` naming the file,
the byte offset and the layer.
"""
import numpy as np

from ..runtime.errors import CheckpointError

__all__ = ['DatError', 'DatReader', 'read_dat']


class DatError(CheckpointError):
    """A dlib .dat file that is not the network expected (names the file, offset and layer)."""


class DatReader:
    """Sequential reader of dlib's serialisation primitives over the bytes of ``path``."""

    def __init__(self, path, data=None):
        self.path = path
        if data is None:
            with open(path, 'rb') as f:
                data = f.read()
        self.data, self.pos, self.where = data, 0, 'start of file'

    def fail(self, message):
        raise DatError('%s: %s (byte %d, in %s)' % (self.path, message, self.pos, self.where))

    def take(self, n):
        if self.pos + n > len(self.data):
            self.fail('truncated: %d more bytes expected, %d left'
                      % (n, len(self.data) - self.pos))
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self):
        """An integer: a control byte (low 4 bits: byte count, bit 7: negative), then bytes."""
        control = self.take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            self.fail('not a serialised integer (control byte 0x%02x)' % control)
        value = int.from_bytes(self.take(size), 'little')
        return -value if control & 0x80 else value

    def string(self):
        size = self.int()
        if not 0 <= size <= 1 << 16:
            self.fail('not a serialised string (length %d)' % size)
        try:
            return self.take(size).decode('ascii')
        except UnicodeDecodeError:
            self.fail('not a serialised string (non-ASCII bytes)')

    def bool(self):
        byte = self.take(1)
        if byte not in (b'0', b'1'):
            self.fail('not a serialised bool (%r)' % byte)
        return byte == b'1'

    def float(self):
        """A float or double: mantissa and base-2 exponent (dlib's portable format)."""
        mantissa, exponent = self.int(), self.int()
        special = {32000: np.inf, 32001: -np.inf, 32002: np.nan}
        if exponent in special:
            return float(special[exponent])
        return float(mantissa) * 2.0 ** exponent

    def expect(self, name, value, allowed):
        if value not in allowed:
            self.fail('%s is %r, expected %s' % (name, value, ' or '.join(map(repr, allowed))))
        return value

    def tensor(self):
        """A tensor: version 2, (num_samples, k, nr, nc), then float32 data -> ndarray."""
        self.expect('tensor version', self.int(), (2,))
        shape = tuple(self.int() for _ in range(4))
        if min(shape) < 0:
            self.fail('tensor with a negative size %s' % (shape,))
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.take(4 * count), dtype='<f4').astype(np.float32).reshape(shape)

    def alias_tensor(self):
        """A view's shape: version 1, (num_samples, k, nr, nc)."""
        self.expect('alias_tensor version', self.int(), (1,))
        return tuple(self.int() for _ in range(4))


# ----------------------------------------------------------------------------- layers
# Each reader takes the fields after the version string and returns a dict of them.

def _con(r, version):
    params = r.tensor()
    num_filters, nr, nc = r.int(), r.int(), r.int()
    stride = (r.int(), r.int())
    padding = (r.int(), r.int())
    filters, biases = r.alias_tensor(), r.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    size = int(np.prod(filters))
    if filters[0] != num_filters or filters[2:] != (nr, nc) or params.size != size + biases[1]:
        r.fail('convolution of %d %dx%d filters with %d parameters' % (
            num_filters, nr, nc, params.size))
    flat = params.reshape(-1)
    return dict(weight=flat[:size].reshape(filters), bias=flat[size:].copy(),
                kernel=(nr, nc), stride=stride, padding=padding)


def _affine(r, version):
    params = r.tensor()
    gamma, beta = r.alias_tensor(), r.alias_tensor()
    mode = r.int()
    channels = int(np.prod(gamma))
    if params.size != 2 * channels or int(np.prod(beta)) != channels:
        r.fail('affine layer of %d channels with %d parameters' % (channels, params.size))
    flat = params.reshape(-1)
    return dict(gamma=flat[:channels].copy(), beta=flat[channels:].copy(), mode=mode)


def _pool(r, version):
    nr, nc = r.int(), r.int()
    stride = (r.int(), r.int())
    padding = (r.int(), r.int())
    return dict(kernel=(nr, nc), stride=stride, padding=padding)


def _fc(r, version):
    num_outputs, num_inputs = r.int(), r.int()
    params = r.tensor()
    r.alias_tensor(), r.alias_tensor()  # weights and biases views
    bias_mode = r.int()
    for _ in range(4):
        r.float()
    has_bias = bias_mode == 0  # dlib's FC_HAS_BIAS = 0, FC_NO_BIAS = 1
    rows = num_inputs + (1 if has_bias else 0)
    if params.size != rows * num_outputs:
        r.fail('fully connected layer %d -> %d with %d parameters'
               % (num_inputs, num_outputs, params.size))
    matrix = params.reshape(rows, num_outputs)  # output = input (1 x num_inputs) . matrix
    return dict(weight=matrix[:num_inputs].T.copy(),
                bias=matrix[num_inputs].copy() if has_bias else None)


def _nothing(r, version):
    return {}


# version string -> (kind, reader)
LAYERS = {
    'con_4': ('con', _con),
    'affine_': ('affine', _affine),
    'relu_': ('relu', _nothing),
    'max_pool_2': ('max_pool', _pool),
    'avg_pool_2': ('avg_pool', _pool),
    'add_prev_': ('add_prev', _nothing),
    'fc_2': ('fc', _fc),
}


def _input_rgb_image_sized(r):
    name = r.string()
    if name != 'input_rgb_image_sized':
        r.fail('input layer %r, expected input_rgb_image_sized' % name)
    mean = tuple(r.float() for _ in range(3))
    size = (r.int(), r.int())
    return dict(kind='input_rgb_image_sized', mean_rgb=mean, size=size)


def _loss_metric(r):
    name = r.string()
    if name != 'loss_metric_2':
        r.fail('loss layer %r, expected loss_metric_2' % name)
    return dict(kind='loss_metric', margin=r.float(), distance_threshold=r.float())


def read_dat(path, architecture, data=None):
    """Read a dlib network file against ``architecture`` (wrappers from the output inwards:
    ``('layer', kind)``, ``('tag', id)`` or ``('skip', id)``).

    Returns ``dict(loss=..., input=..., layers=[...])``: ``layers`` the computational layers
    in forward order (input side first), each a dict with ``kind`` and its fields (float32
    arrays: convolution ``weight`` (O, I, kh, kw) and ``bias`` (O,), affine ``gamma`` and
    ``beta`` (C,), fully connected ``weight`` (outputs, inputs) and ``bias`` or None).
    Raises DatError (a CheckpointError) naming the file, byte offset and layer on any mismatch.
    """
    r = DatReader(path, data)
    r.where = 'the loss layer'
    r.expect('loss layer version', r.int(), (1,))
    loss = _loss_metric(r)
    innermost = max(i for i, (what, _) in enumerate(architecture) if what == 'layer')
    versions = []
    for i, (what, name) in enumerate(architecture):  # versions, outside in
        r.where = '%s %s (wrapper %d from the output)' % (what, name, i)
        if what == 'layer':
            versions.append(r.expect('add_layer version', r.int(),
                                     (2, 3) if i == innermost else (1, 2)))
        else:
            versions.append(r.expect('%s layer version' % what, r.int(), (1,)))
    r.where = 'the input layer'
    inputs = _input_rgb_image_sized(r)
    layers = []
    for i in range(len(architecture) - 1, -1, -1):  # each layer's own part, inside out
        what, kind = architecture[i]
        if what != 'layer':
            continue
        r.where = 'layer %d (%s) from the input' % (len(layers), kind)
        version = r.string()
        if version not in LAYERS:
            r.fail('unknown layer %r (this reader knows %s)' % (version, ', '.join(LAYERS)))
        found, reader = LAYERS[version]
        if found != kind:
            r.fail('a %s layer where the architecture has %s' % (found, kind))
        layer = dict(reader(r, version), kind=kind)
        for _ in range(3):  # setup called, gradient input stale, output getters disabled
            r.bool()
        r.tensor(), r.tensor()  # x_grad, cached_output (training state)
        if i == innermost:
            r.tensor()  # grad_final
            if versions[i] >= 3:
                r.int()  # sample_expansion_factor
        elif versions[i] >= 2:
            r.tensor()  # params_grad
        layers.append(layer)
    if r.pos != len(r.data):
        r.where = 'the end of the network'
        r.fail('%d bytes after the network' % (len(r.data) - r.pos))
    return dict(loss=loss, input=inputs, layers=layers)
