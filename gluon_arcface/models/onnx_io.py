"""ONNX in and out: :func:`export_onnx` writes a face model for onnxruntime and the
``insightface`` package; :class:`OnnxEmbeddingNet` / :func:`load_onnx` run an ONNX face model
like the package's own blocks; :func:`compare_onnx` checks an export against its network.

An exported model takes RGB float32 (N, 3, H, W) with pixel values 0-255 and normalises them
in its first nodes (a ``Sub`` and a ``Mul``), as InsightFace's own models do.
"""
import os

import numpy as np

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import numpy as mnp

from ..nn.model import backbone_of
from ..runtime.errors import CheckpointError
from ..nn.embed import compute_embeddings
from ..runtime.fileio import atomic_write
from .interop import check_input_range, insightface_names, ir_symbol, structural_name

__all__ = ['ONNX_OPSET', 'export_onnx', 'OnnxEmbeddingNet', 'load_onnx', 'compare_onnx']

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
    from ..nn.dlib_resnet import DlibResNet, export_dlib_onnx, find_dlib_resnet
    if isinstance(find_dlib_resnet(net), DlibResNet):
        return export_dlib_onnx(find_dlib_resnet(net), path)
    import onnx
    from onnx import helper, numpy_helper
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    backbone = backbone_of(net)
    if backbone is None:
        raise TypeError('export_onnx takes a TestBlock, FaceResNet, TrainBlock or FeatBlock; got '
                        '%s (an exported or InsightFace model: pretrained.faceresnet_from_model)'
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
        params[names[structural_name(name)]] = mx.nd.array(value)
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
    """An ONNX face model (:func:`export_onnx`'s, or any with one RGB 0-255 input; one taking
    [0, 1] with ``input_range=1``) run by onnxruntime, called like the package's blocks:
    ``net(x)`` with x (N, 3, H, W) in [0, 1] (an ``mxnet.np`` or numpy array) returns
    ``mxnet.np`` embeddings (N, D)."""

    def __init__(self, path, threads=None, input_range=None):
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
        self.source = path
        self.input_range = 255 if check_input_range(input_range) is None else input_range

    def __call__(self, x):
        x = x.asnumpy() if hasattr(x, 'asnumpy') else np.asarray(x)
        if tuple(x.shape[2:4]) != self.image_size:
            raise ValueError('%s takes %sx%s images, got %sx%s' % (
                (self.source,) + self.image_size + tuple(x.shape[2:4])))
        out = self.session.run(None, {self.input_name: (x * float(self.input_range))
                                      .astype(np.float32)})[0]
        return mnp.array(out)


def load_onnx(path, threads=None, input_range=None):
    """An :class:`OnnxEmbeddingNet` for ``path`` (pixels 0-255 unless ``input_range`` is 1)."""
    if not os.path.isfile(path):
        raise FileNotFoundError('%s: ONNX model not found' % path)
    return OnnxEmbeddingNet(path, threads, input_range)


def compare_onnx(net, path, image_size, num_images=8, seed=0):
    """``(largest |onnxruntime - MXNet|, largest |embedding|)`` of ``net`` and its ONNX export
    on ``num_images`` smooth random face-sized images (pixel values 0-255)."""
    rng = np.random.RandomState(seed)
    low = rng.uniform(0, 255, size=(num_images, 3, 8, 8)).astype(np.float32)
    images = np.repeat(np.repeat(low, image_size[0] // 8 + 1, axis=2),
                       image_size[1] // 8 + 1, axis=3)[:, :, :image_size[0], :image_size[1]]
    images = np.clip(images + rng.normal(0, 8, images.shape), 0, 255).astype(np.float32)
    ours = compute_embeddings([images / 255.0], net, batch_size=num_images, fast=False)
    theirs = compute_embeddings([images / 255.0], load_onnx(path), batch_size=num_images)
    return float(np.abs(ours - theirs).max()), float(np.abs(ours).max())
