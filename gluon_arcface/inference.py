"""Embeddings for deployment: the chapter's get_embedding, images from files, face comparison,
and export of the embedding network (symbol + params) for serving.

Images go into the network exactly as in training and verification: RGB, (3, H, W) float32 in
[0, 1]. Embeddings of an image and of its mirror image are summed and L2-normalised, as in the
verification protocols, so a threshold chosen by verification applies to ``compare_faces``.
"""
import os

import numpy as np
from . import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import np as mnp

from .images import decode_image, resize_face, to_network_input
from .devices import as_contexts
from .errors import FaceDataError
from .verification import compute_embeddings, l2_normalize

__all__ = ['get_embedding', 'preprocess', 'embed_images', 'embed_files', 'cosine_similarity',
           'compare_faces', 'FaceEmbedder']


def get_embedding(img, net, ctx=None):
    """The chapter's get_embedding: RGB uint8 (H, W, 3) -> raw embedding (1, emb_size), an
    ``mxnet.np`` float32 array on the first device of ``ctx``; not normalised."""
    ctx = as_contexts(ctx, net)[0]
    x = preprocess(img, img.shape[:2])[None]
    emb = compute_embeddings([x], net, ctx, batch_size=1, fast=False)
    return mnp.array(emb, dtype='float32', ctx=ctx)


def preprocess(img, image_size):
    """RGB uint8 (H, W, 3) -> float32 (3, H', W') in [0, 1], resized to ``image_size`` (H', W')."""
    img = np.asarray(img.asnumpy() if hasattr(img, 'asnumpy') else img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError('expected an RGB image of shape (H, W, 3), got %s' % (img.shape,))
    return to_network_input(resize_face(img, tuple(image_size)))


def embed_images(images, net, ctx=None, image_size=(112, 112), batch_size=64, flip=True):
    """Embed RGB uint8 images -> L2-normalised float32 (N, emb_size) numpy array.

    With ``flip`` the embedding of each image's mirror image is added before normalising, as
    the verification protocols do, so their thresholds apply.
    """
    batch = np.stack([preprocess(img, image_size) for img in images])
    views = [batch, batch[:, :, :, ::-1]] if flip else [batch]
    return compute_embeddings(views, net, as_contexts(ctx, net)[:1], batch_size, fast=False,
                              normalize=True).astype(np.float32)


def embed_files(paths, net, ctx=None, image_size=(112, 112), batch_size=64, flip=True):
    """Embed image files (aligned face crops) -> L2-normalised float32 (N, emb_size)."""
    images = []
    for path in paths:
        try:
            with open(path, 'rb') as f:
                images.append(decode_image(f.read(), path))
        except FileNotFoundError:
            raise FaceDataError(path, 'image file not found') from None
    return embed_images(images, net, ctx, image_size, batch_size, flip)


def cosine_similarity(a, b):
    """Row-wise cosine similarity of two (N, D) arrays (or two (D,) vectors)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    sim = np.sum(l2_normalize(a) * l2_normalize(b), axis=1)
    return sim if len(sim) > 1 else float(sim[0])


def compare_faces(img_a, img_b, net, threshold, ctx=None, image_size=(112, 112)):
    """Whether two face images show the same person -> ``(cosine similarity, same)``.

    ``threshold`` is a cosine similarity, e.g. ``VerificationResult.cos_threshold`` from a
    verification run of the same network. Images are RGB uint8 arrays or file paths.
    """
    loaded = []
    for img in (img_a, img_b):
        if isinstance(img, (str, os.PathLike)):
            with open(img, 'rb') as f:
                img = decode_image(f.read(), img)
        loaded.append(img)
    emb = embed_images(loaded, net, ctx, image_size)
    sim = float(np.dot(emb[0], emb[1]))
    return sim, sim > threshold


class FaceEmbedder:
    """An embedding network with its input size and decision threshold, ready to compare faces.

    ``threshold`` is a cosine similarity (from verification); ``embed(images or paths)`` returns
    normalised (N, D) embeddings; ``compare(a, b)`` returns ``(similarity, same)``.
    """

    def __init__(self, net, image_size=(112, 112), threshold=None, ctx=None):
        self.net, self.image_size, self.threshold = net, tuple(image_size), threshold
        self.ctx = as_contexts(ctx, net)[0]

    @classmethod
    def load(cls, model, image_size=None, threshold=None, ctx=None, epoch=None):
        """From anything :func:`~gluon_arcface.interop.load_face_model` takes (a run folder, an
        exported model, an InsightFace checkpoint, an .onnx file). The input size comes from the
        model and the threshold from its ``model.json`` (when it holds one verification set's)
        unless given."""
        from .interop import load_face_model, read_model_info
        net, model_size, source = load_face_model(model, ctx, epoch)
        if threshold is None and not source.lower().endswith('.onnx'):
            thresholds = (read_model_info(source) or {}).get('cos_threshold') or {}
            if len(thresholds) == 1:
                threshold = float(next(iter(thresholds.values())))
        return cls(net, image_size or model_size, threshold, ctx)

    def embed(self, images):
        if images and isinstance(images[0], (str, os.PathLike)):
            return embed_files(images, self.net, self.ctx, self.image_size)
        return embed_images(images, self.net, self.ctx, self.image_size)

    def compare(self, a, b, threshold=None):
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError('no threshold: pass one, or use cos_threshold from a verification '
                             'run')
        return compare_faces(a, b, self.net, threshold, self.ctx, self.image_size)
