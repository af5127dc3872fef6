"""Running a network over images in batches: the package's one embedding path.

:func:`compute_embeddings` feeds views of a set of face images (e.g. originals and mirrors)
through a network on one or several devices and sums each image's embeddings;
:func:`l2_normalize` scales rows to unit length. Verification, inference, export checks and
training's validation all embed through here.
"""
from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import numpy as np
from mxnet import autograd, gluon

from ..runtime.devices import as_contexts

__all__ = ['compute_embeddings', 'l2_normalize', 'image_views', 'to_numpy']


def image_views(data_list):
    """``data_list`` (one (N, C, H, W) array or a list of them) as a list of views of one
    shape, or ValueError."""
    if hasattr(data_list, 'shape'):
        data_list = [data_list]
    data_list = list(data_list)
    if not data_list:
        raise ValueError('data_list is empty: expected [originals, flipped]')
    shape = tuple(data_list[0].shape)
    if len(shape) != 4 or shape[0] == 0:
        raise ValueError(f'each view must be a non-empty (2N, C, H, W) array, got shape {shape}')
    for view in data_list[1:]:
        if tuple(view.shape) != shape:
            raise ValueError(f'all views must have the same shape, got {shape} and '
                             f'{tuple(view.shape)}')
    return data_list


def to_numpy(array):
    """An ``mxnet`` or NumPy array (or list) as a NumPy array."""
    return array.asnumpy() if hasattr(array, 'asnumpy') else np.asarray(array)


def compute_embeddings(data_list, net, ctx=None, batch_size=512, fast=True, normalize=False,
                       dtype=None, progress=False):
    """The embeddings of a set of images, summed over its views: the package's one embedding
    path (verification, ``test_face_11``, ``get_embedding``, ``embed_images``, FaceEmbedder).

    Every batch is zero-padded to the same size (a hybridized net keeps static shapes), split
    over ``ctx`` with ``split_and_load`` (the last device takes the remainder); the padding
    rows are dropped. Runs in predict mode.

    Parameters
    ----------
    data_list : list of arrays, or one array
        Views of the same N images (e.g. ``[originals, flipped]``), each (N, 3, H, W) numpy or
        mxnet, values in [0, 1]; fed as float32.
    net : block or callable
        ``net(x) -> (n, D)``: a TestBlock, FaceResNet, loaded model, or e.g.
        ``onnx_io.OnnxEmbeddingNet``.
    ctx : Context, list or str, optional
        Devices (``devices.as_contexts``; None: where ``net``'s parameters are).
    batch_size : int
        Images per forward pass (split over the devices).
    fast : bool
        Run a FaceResNet-based ``net`` as ``model.inference_net`` copies (oneDNN fusion; same
        embeddings within float tolerance), made for this call (about a second for
        FaceResNet-18: worth it for a verification set, not for a few photos).
    normalize : bool
        Divide each row by its L2 norm.
    dtype : {None, 'float32', 'bfloat16'}
        Compute dtype of the fast copies (bfloat16: CPUs with AVX512-BF16 or AMX); needs
        ``fast``.
    progress : bool or str
        A progress bar over the images (a string names it).

    Returns
    -------
    numpy.ndarray
        (N, D) float64: the sum of the views' embeddings (L2-normalised with ``normalize``).
    """
    from .model import inference_nets
    data_list = image_views(data_list)
    ctx = as_contexts(ctx, net)
    if dtype is not None and not fast:
        raise ValueError('compute_embeddings: dtype=%r needs fast=True (an inference copy)'
                         % dtype)
    nets = (inference_nets(net, ctx, data_list[0].shape, dtype) if fast else [net] * len(ctx))
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size!r}')
    n = data_list[0].shape[0]
    # One fixed batch shape; no larger than the set, and at least one image per device.
    batch_size = max(min(batch_size, n), len(ctx))
    embeddings = None
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(data_list) * n, unit='img', mininterval=1.0, leave=False,
                   desc=progress if isinstance(progress, str) else 'embeddings')
    with autograd.predict_mode():
        for view in data_list:
            for start in range(0, n, batch_size):
                chunk = to_numpy(view[start:start + batch_size])
                count = chunk.shape[0]
                batch = np.zeros((batch_size,) + chunk.shape[1:], dtype=np.float32)
                batch[:count] = chunk
                parts = gluon.utils.split_and_load(batch, ctx_list=ctx, batch_axis=0,
                                                   even_split=False)
                out = np.concatenate([m(x).asnumpy() for m, x in zip(nets, parts)], axis=0)
                if embeddings is None:
                    embeddings = np.zeros((n, out.shape[1]))
                embeddings[start:start + count] += out[:count]
                if bar is not None:
                    bar.update(count)
    if bar is not None:
        bar.close()
    return l2_normalize(embeddings) if normalize else embeddings


def l2_normalize(emb):
    """(N, D) rows divided by their L2 norm (numpy, any float dtype); zero rows stay zero."""
    emb = np.asarray(emb)
    norms = np.sqrt(np.sum(emb * emb, axis=1, keepdims=True))
    return emb / np.where(norms > 0, norms, 1)
