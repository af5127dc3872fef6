"""Face alignment to the ArcFace 5-point template (similarity transform + ``cv2.warpAffine``).

Landmarks are five ``(x, y)`` pixel positions in this order: left eye, right eye, nose tip, left
mouth corner, right mouth corner ("left" as seen in the image). A (5, 2) array, x first, in the
coordinates of the decoded image (OpenCV applies EXIF orientation when decoding). Detectors that
print ``x1..x5, y1..y5`` (MTCNN) must be reshaped by the caller: a flat array of 10 values is
refused because both orders exist. A face detected in an ordinary photo is aligned by
``gaf.align_photo`` (:func:`gluon_arcface.data.detect.align_photo`).
"""

import numpy as np

import cv2

__all__ = ['ARCFACE_TEMPLATE', 'reference_landmarks', 'check_landmarks', 'estimate_similarity',
           'align_face']

#: Where the five landmarks land in a 112x112 ArcFace crop, (5, 2) float32 (x, y).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963],
                             [73.5318, 51.5014],
                             [56.0252, 71.7366],
                             [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float32)
ARCFACE_TEMPLATE.setflags(write=False)


def _image_size(image_size):
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError('image_size must be (height, width), got %r' % (image_size,)) from None
    if height <= 0 or width <= 0:
        raise ValueError('image_size must be positive, got %r' % (image_size,))
    return height, width


def reference_landmarks(image_size=(112, 112)):
    """The template for an output of ``image_size`` (H, W) -> (5, 2) float32 (x, y).

    The 112x112 template is scaled by H / 112 and centred horizontally, so 112x96 gives
    InsightFace's variant (x - 8) and 224x224 doubles every coordinate.
    """
    height, width = _image_size(image_size)
    scale = height / 112.0
    ref = ARCFACE_TEMPLATE.astype(np.float64) * scale
    ref[:, 0] += (width - 112.0 * scale) / 2.0
    return ref.astype(np.float32)


def check_landmarks(landmarks, what='landmarks'):
    """Validate five (x, y) points -> float64 array (5, 2); ValueError saying what is wrong."""
    try:
        pts = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError('%s must be numbers, a (5, 2) array of (x, y) points' % what) from None
    if pts.shape != (5, 2):
        hint = ''
        if pts.size == 10:
            hint = (' (10 values are ambiguous: reshape x1 y1 x2 y2 ... with reshape(5, 2), '
                    'or x1..x5 y1..y5 with reshape(2, 5).T)')
        raise ValueError('%s must have shape (5, 2): (x, y) of left eye, right eye, nose, left '
                         'and right mouth corners; got shape %s%s' % (what, pts.shape, hint))
    if not np.isfinite(pts).all():
        raise ValueError('%s contain NaN or infinite values' % what)
    return pts


def estimate_similarity(src_pts, dst_pts):
    """Least-squares similarity transform (Umeyama 1991) mapping ``src_pts`` onto ``dst_pts``.

    ``src_pts``, ``dst_pts``: (N, 2) points, N >= 2. Returns the 2x3 float64 matrix ``M`` with
    ``dst ~= M[:, :2] @ src + M[:, 2]`` (rotation, uniform scale, translation; no reflection),
    as ``cv2.warpAffine`` takes it.
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError('expected two (N, 2) point arrays of the same shape, got %s and %s'
                         % (src.shape, dst.shape))
    if src.shape[0] < 2:
        raise ValueError('need at least 2 points, got %d' % src.shape[0])
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError('points contain NaN or infinite values')
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c ** 2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError('source points all coincide: no transform is defined')
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:  # the best orthogonal map would be a reflection
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def align_face(img, landmarks, image_size=(112, 112)):
    """Warp a face so that its five landmarks land on the ArcFace template.

    ``img``: uint8 (H0, W0, 3) RGB (or any channel order: pixels are only moved);
    ``landmarks``: (5, 2) (x, y) in ``img``. Returns uint8 (H, W, 3) for ``image_size`` (H, W),
    bilinear, with black (0) outside the source.
    """
    height, width = _image_size(image_size)
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError('expected a uint8 (H, W, 3) image, got a %s array of shape %s'
                         % (img.dtype, img.shape))
    pts = check_landmarks(landmarks)
    matrix = estimate_similarity(pts, reference_landmarks((height, width)))
    return cv2.warpAffine(img, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
