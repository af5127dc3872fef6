"""A detection and alignment test set: face images pasted at known positions, sizes and small
rotations into larger backgrounds, so that where each landmark lies in the frame is known.

* :func:`astronaut_source` / :func:`bin_sources`: faces to paste (:data:`Source`: an RGB image
  and the five ArcFace landmarks of its face, found by dlib on the unpasted image).
* :func:`make_frames`: deterministic frames (``seed``) with each face's true landmarks.
* :func:`landmark_error`: mean distance, in pixels of the aligned crop, between where the
  alignment from detected landmarks and the one from the true landmarks put the true landmarks.
* :func:`evaluate`: detection rate, landmark error and seconds per frame of
  :func:`gluon_arcface.data.detect.find_face` over frames.

The reference landmarks are dlib's on the unpasted face, so the error measures how far pasting
(size, rotation, background, greyscale) moves detection + alignment from that reference, not
dlib's own error against hand-marked points.
"""
import collections
import time

import cv2
import numpy as np

from .align import estimate_similarity, reference_landmarks

__all__ = ['Source', 'Frame', 'astronaut_source', 'photo_source', 'portrait_sources',
           'bin_sources', 'background', 'paste',
           'make_frames', 'landmark_error', 'template_residual', 'evaluate', 'BACKGROUNDS']

Source = collections.namedtuple('Source', 'image landmarks name')
Frame = collections.namedtuple('Frame', 'image landmarks source background grey width angle')
#: Background kinds: noise, a colour gradient, and skimage's photos (camera, brick and grass are
#: greyscale).
BACKGROUNDS = ('noise', 'gradient', 'coffee', 'chelsea', 'rocket', 'camera', 'brick', 'grass')


def _eye_distance(pts):
    return float(np.linalg.norm(pts[1] - pts[0]))


def _crop_source(img, landmarks, name, margin=1.6):
    """A patch around the face (``margin`` x eye distance x 2 on each side of the eyes' middle)."""
    pts = np.asarray(landmarks, np.float64)
    centre = pts.mean(0)
    half = margin * 2 * _eye_distance(pts)
    x0, y0 = (max(0, int(c - half)) for c in centre)
    x1, y1 = min(img.shape[1], int(centre[0] + half)), min(img.shape[0], int(centre[1] + half))
    return Source(np.ascontiguousarray(img[y0:y1, x0:x1]),
                  (pts - [x0, y0]).astype(np.float32), name)


def astronaut_source():
    """skimage's astronaut (Eileen Collins), her face and shoulders, with dlib's landmarks."""
    import skimage.data
    return photo_source(skimage.data.astronaut(), 'astronaut')


def photo_source(img, name, detector='hog'):
    """The face of an RGB portrait with dlib's landmarks, and the head and shoulders around it
    (``detector``: 'hog' or 'cnn', dlib's detector that finds it)."""
    from .detect import detect_faces
    face = detect_faces(img, detector, 1 if detector == 'hog' else 0)[0]
    return _crop_source(img, face.landmarks, name)


def portrait_sources():
    """Two real portraits that ship with the test dependencies: skimage's astronaut (Eileen
    Collins, colour) and matplotlib's Grace Hopper (colour, a uniform in front of a flag)."""
    import matplotlib.cbook
    path = matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)
    hopper = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return [astronaut_source(), photo_source(hopper, 'grace_hopper')]


def bin_sources(path, limit=None, step=1):
    """Face crops of a verification .bin (every ``step``-th image, at most ``limit``) with
    dlib's landmarks of each crop (:func:`gluon_arcface.data.detect.crop_landmarks`)."""
    from .binfile import read_bin
    from .detect import crop_landmarks
    from .images import decode_image
    bins, _ = read_bin(path)
    picks = list(range(0, len(bins), step))[:limit]
    out = []
    for i in picks:
        img = decode_image(bins[i], path, record=i)
        out.append(Source(img, crop_landmarks(img), '%s[%d]' % (path, i)))
    return out


def _skimage(name):
    import skimage.data
    img = getattr(skimage.data, name)()
    return img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)


def background(kind, size, rng):
    """An RGB uint8 background (H, W, 3) of ``kind`` (:data:`BACKGROUNDS`) at ``size`` (H, W)."""
    height, width = size
    if kind == 'noise':
        small = rng.randint(0, 256, (max(2, height // 16), max(2, width // 16), 3)).astype(np.uint8)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    if kind == 'gradient':
        a, b = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
        t = np.linspace(0, 1, width)[None, :, None] * np.ones((height, 1, 1))
        return (a * (1 - t) + b * t).astype(np.uint8)
    if kind not in BACKGROUNDS:
        raise ValueError('background must be one of %s, got %r' % (BACKGROUNDS, kind))
    img = _skimage(kind)
    scale = max(height / img.shape[0], width / img.shape[1])
    img = cv2.resize(img, (int(np.ceil(img.shape[1] * scale)), int(np.ceil(img.shape[0] * scale))),
                     interpolation=cv2.INTER_LINEAR)
    y0 = rng.randint(0, img.shape[0] - height + 1)
    x0 = rng.randint(0, img.shape[1] - width + 1)
    return np.ascontiguousarray(img[y0:y0 + height, x0:x0 + width])


def paste(source, frame, width, angle, centre):
    """Paste ``source`` into ``frame`` (modified in place): its face ``width`` pixels wide (2.5
    eye distances), turned by ``angle`` degrees (counter-clockwise), the middle of its eyes at
    ``centre``; the patch's edge is feathered. Returns the true landmarks (5, 2) in the frame."""
    pts = np.asarray(source.landmarks, np.float64)
    scale = width / (2.5 * _eye_distance(pts))
    eyes = pts[:2].mean(0)
    matrix = cv2.getRotationMatrix2D((float(eyes[0]), float(eyes[1])), angle, scale)
    matrix[:, 2] += np.asarray(centre, np.float64) - eyes
    h, w = frame.shape[:2]
    warped = cv2.warpAffine(source.image, matrix, (w, h), flags=cv2.INTER_AREA
                            if scale < 1 else cv2.INTER_LINEAR)
    sh, sw = source.image.shape[:2]
    mask = np.zeros((sh, sw), np.float32)
    edge = max(2, min(sh, sw) // 40)
    mask[edge:-edge, edge:-edge] = 1
    mask = cv2.GaussianBlur(mask, (0, 0), edge / 2.0)
    mask = cv2.warpAffine(mask, matrix, (w, h))[:, :, None]
    frame[:] = (warped * mask + frame * (1 - mask) + 0.5).astype(np.uint8)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def make_frames(sources, count, seed=0, frame_sizes=((300, 400), (600, 800)),
                widths=(60, 250), max_angle=10.0, grey=0.25, backgrounds=BACKGROUNDS):
    """``count`` frames, each one source (in turn) pasted into a background: frame (H, W)
    uniform between the two ``frame_sizes``, face width uniform in ``widths`` (capped at 60 %
    of the frame's height), angle uniform in +-``max_angle``, placed uniformly where the face
    stays inside; a fraction ``grey`` of the frames made greyscale (three equal channels)."""
    rng = np.random.RandomState(seed)
    (h0, w0), (h1, w1) = frame_sizes
    frames = []
    for i in range(count):
        source = sources[i % len(sources)]
        t = rng.uniform()
        size = (int(round(h0 + t * (h1 - h0))), int(round(w0 + t * (w1 - w0))))
        kind = backgrounds[rng.randint(len(backgrounds))]
        frame = background(kind, size, rng)
        width = min(rng.uniform(*widths), 0.6 * size[0])
        angle = rng.uniform(-max_angle, max_angle)
        margin = 0.9 * width
        centre = (rng.uniform(margin, size[1] - margin), rng.uniform(margin, size[0] - margin))
        truth = paste(source, frame, width, angle, centre)
        is_grey = rng.uniform() < grey
        if is_grey:
            frame = np.repeat(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
        frames.append(Frame(frame, truth, source.name, kind, is_grey, width, angle))
    return frames


def landmark_error(true_landmarks, found_landmarks, image_size=(112, 112)):
    """Alignment error: mean distance (pixels of the ``image_size`` crop) between where the
    alignment from the found landmarks and the alignment from the true landmarks put the true
    landmarks. 0 when detection finds the true points (up to a similarity); the face's own
    distance from the template (:func:`template_residual`) is not counted."""
    ref = reference_landmarks(image_size).astype(np.float64)
    true = np.asarray(true_landmarks, np.float64)
    found = estimate_similarity(found_landmarks, ref)
    exact = estimate_similarity(true, ref)
    mapped = true @ found[:, :2].T + found[:, 2]
    wanted = true @ exact[:, :2].T + exact[:, 2]
    return float(np.linalg.norm(mapped - wanted, axis=1).mean())


def template_residual(landmarks, image_size=(112, 112)):
    """Mean distance (pixels at ``image_size``) of a face's landmarks, aligned from themselves,
    to ArcFace's template: how far that face's shape is from the template's."""
    ref = reference_landmarks(image_size).astype(np.float64)
    pts = np.asarray(landmarks, np.float64)
    m = estimate_similarity(pts, ref)
    return float(np.linalg.norm(pts @ m[:, :2].T + m[:, 2] - ref, axis=1).mean())


def evaluate(frames, detector='auto', policy='largest', image_size=(112, 112)):
    """Run :func:`gluon_arcface.data.detect.find_face` on every frame -> dict: ``found`` (the kept
    face is the pasted one: its box holds the true nose tip), ``frames``, ``rate``,
    ``mean_error`` / ``median_error`` / ``max_error`` (pixels at ``image_size``, found faces),
    ``seconds`` per frame, ``errors`` (per frame, NaN when missed), ``reasons`` of misses,
    ``steps``: [(detection step, pasted faces it found)] (:func:`detect.detector_steps`)."""
    from .detect import detect_steps, detector_steps, pick_face
    errors, reasons, steps = [], collections.Counter(), collections.Counter()
    names = ['%s up %d' % step[:2] for step in detector_steps(detector)]
    start = time.perf_counter()
    for frame in frames:
        faces, step = detect_steps(frame.image, detector)
        face, reason = pick_face(faces, policy)
        if face is None:
            errors.append(float('nan'))
            reasons[reason.split(' (')[0]] += 1
            continue
        x0, y0, x1, y1 = face.box
        nx, ny = frame.landmarks[2]
        if not (x0 <= nx <= x1 and y0 <= ny <= y1):
            errors.append(float('nan'))
            reasons['another face kept'] += 1
            continue
        errors.append(landmark_error(frame.landmarks, face.landmarks, image_size))
        steps[names[step]] += 1
    seconds = (time.perf_counter() - start) / max(1, len(frames))
    errors = np.array(errors)
    hit = errors[np.isfinite(errors)]
    return collections.OrderedDict([
        ('frames', len(frames)), ('found', int(len(hit))),
        ('rate', len(hit) / max(1, len(frames))),
        ('mean_error', float(hit.mean()) if len(hit) else float('nan')),
        ('median_error', float(np.median(hit)) if len(hit) else float('nan')),
        ('max_error', float(hit.max()) if len(hit) else float('nan')),
        ('seconds', seconds), ('errors', errors), ('reasons', dict(reasons)),
        ('steps', [(n, steps[n]) for n in names])])
