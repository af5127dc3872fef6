"""Procedural faces: the offline ``faces-synthetic`` dataset.

Real face datasets cannot be downloaded everywhere, so tests, notebooks and ``make train`` can run
on procedurally drawn faces instead. An *identity* is a set of traits drawn once per person
(:func:`sample_identity`): face shape (width, length, jaw and chin), skin colour, hair colour and
style, eye colour, size and spacing, eyebrows, nose and mouth geometry, a skin texture (freckles,
spots, stripes, a birthmark or blush) whose layout is seeded per identity, and optional ears,
glasses, beard or moustache. Every *image* of an identity (:func:`render_face`) then varies in the
nuisances a face recogniser must ignore: pose (in-plane rotation, shift, scale and a yaw that
turns the face and moves its features sideways), lighting (exposure, a directional gradient,
colour temperature and gamma), expression (smile, open mouth, blinking, raised eyebrows),
clothing, background clutter, occlusion (patches, bars, a hand, sunglasses, a cap or a scarf),
blur and sensor noise.

The nuisances are strong enough that raw pixels are a poor face descriptor (cosine similarity of
flattened pixels verifies the held-out pairs at about 0.6-0.7 accuracy, 10-fold) while a
FaceResNet trained with ArcFace on a few thousand images separates them.

Everything is deterministic given ``seed``: identity ``k`` and image ``j`` of identity ``k`` each
have their own random stream, so the first identities do not change when more are asked for.
Training identities are ``0 .. num_identities-1``; the verification pairs use identities from
``num_identities`` on (:func:`generate_pairs`), so they are disjoint from training by construction.

Images are RGB uint8 arrays of shape (H, W, 3).
"""
import math
import os

import cv2
import numpy as np

SYNTHETIC_VAL = 'synthetic_val'  # name of the verification set (synthetic_val.bin)

__all__ = ['SYNTHETIC_DEFAULTS', 'SYNTHETIC_VAL', 'NUISANCE', 'OCCLUDERS', 'sample_identity',
           'render_face', 'generate_faces', 'generate_pairs', 'pair_identities', 'jpeg_roundtrip',
           'make_faces_synthetic']

# Default sizes of the faces-synthetic dataset (see make_faces_synthetic).
SYNTHETIC_DEFAULTS = dict(
    num_identities=400,       # training identities (classes)
    images_per_identity=12,   # training images per identity
    num_heldout=100,          # identities reserved for the verification pairs
    num_pairs=600,            # verification pairs, half same-identity
    image_size=32,            # H = W (a multiple of 16 for FaceResNet)
    seed=0,
)

_SUPERSAMPLE = 4      # faces are drawn at 4x the output size, then area-downsampled
_FACE_SCALE = 0.9     # face units to half the image size
_STREAM_ID, _STREAM_IMG, _STREAM_PAIRS = 1, 2, 3


def _rng(seed, *keys):
    """An independent numpy Generator for (seed, *keys)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed)] + [int(k) for k in keys]))


def _hsv(h, s, v):
    """RGB in [0, 1] of a hue in degrees, saturation and value in [0, 1]."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = v - c
    return np.array([r + m, g + m, b + m], np.float32)


# Anchor skin tones (RGB 0-1), from very light to very dark; identities interpolate between them.
_SKIN_ANCHORS = np.array([[0.98, 0.86, 0.78], [0.95, 0.76, 0.62], [0.86, 0.64, 0.47],
                           [0.72, 0.50, 0.34], [0.55, 0.36, 0.23], [0.36, 0.23, 0.15]],
                          np.float32)
_HAIR_ANCHORS = np.array([[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.45, 0.30, 0.16],
                           [0.85, 0.70, 0.40], [0.65, 0.25, 0.10], [0.70, 0.70, 0.70],
                           [0.93, 0.92, 0.90]], np.float32)
_IRIS_ANCHORS = np.array([[0.30, 0.18, 0.08], [0.15, 0.35, 0.75], [0.20, 0.55, 0.30],
                           [0.50, 0.55, 0.60], [0.05, 0.05, 0.05]], np.float32)
HAIR_STYLES = ('bald', 'crop', 'long', 'bob', 'fringe', 'spiky', 'side', 'bun', 'afro',
               'mohawk', 'ponytail')
TEXTURES = ('plain', 'freckles', 'spots', 'stripes', 'birthmark', 'blush', 'mask', 'half',
            'forehead', 'cheeks')


def _pick(rng, anchors, jitter):
    """A colour between two neighbouring anchors, with a little per-channel jitter."""
    t = rng.uniform(0, len(anchors) - 1)
    i = min(int(t), len(anchors) - 2)
    c = anchors[i] * (1 - (t - i)) + anchors[i + 1] * (t - i)
    return np.clip(c + rng.normal(0, jitter, 3), 0.02, 0.98).astype(np.float32)


def sample_identity(rng):
    """Draw one identity's traits (a dict) from ``rng`` (a numpy Generator).

    Geometry is in face units: the face spans about [-0.6, 0.6] x [-0.75, 0.75], centred.
    """
    u = rng.uniform
    ident = {}
    # Face shape: half-width, half-height, superellipse exponent (round .. square), jaw width.
    ident['face_w'] = u(0.48, 0.66)
    ident['face_h'] = u(0.64, 0.80)
    ident['face_p'] = u(1.8, 3.2)
    ident['jaw'] = u(0.55, 1.0)         # width of the lower face relative to the upper
    ident['chin'] = u(0.0, 0.25)        # pointiness of the chin
    # Skin: mostly natural tones, some painted (fantasy) faces.
    if u() < 0.4:
        ident['skin'] = _hsv(u(0, 360), u(0.25, 0.7), u(0.45, 0.95))
    else:
        ident['skin'] = _pick(rng, _SKIN_ANCHORS, 0.03)
    # Hair: natural or dyed colour, a style, its volume and length.
    if u() < 0.5:
        ident['hair'] = _hsv(u(0, 360), u(0.5, 0.95), u(0.35, 0.95))
    else:
        ident['hair'] = _pick(rng, _HAIR_ANCHORS, 0.04)
    ident['hair_style'] = HAIR_STYLES[rng.integers(len(HAIR_STYLES))]
    ident['hair_volume'] = u(0.06, 0.2)
    ident['hair_length'] = u(0.2, 0.95)
    ident['hairline'] = u(-0.55, -0.25)  # y of the hairline on the forehead
    ident['part'] = u(-0.4, 0.4)         # parting / asymmetry of the fringe
    # Eyes: height, spacing, size, iris colour; eyebrows: thickness, slope, height.
    ident['eye_y'] = u(-0.2, 0.0)
    ident['eye_dx'] = u(0.17, 0.29)
    ident['eye_r'] = u(0.065, 0.11)
    ident['eye_aspect'] = u(0.45, 0.8)
    ident['iris'] = _pick(rng, _IRIS_ANCHORS, 0.05)
    ident['brow_t'] = u(0.02, 0.07)
    ident['brow_slope'] = u(-0.25, 0.25)
    ident['brow_gap'] = u(0.07, 0.15)
    ident['brow_color'] = np.clip(ident['hair'] * u(0.5, 1.0), 0, 1).astype(np.float32)
    # Nose and mouth.
    ident['nose_len'] = u(0.12, 0.28)
    ident['nose_w'] = u(0.05, 0.14)
    ident['nose_style'] = int(rng.integers(3))
    ident['mouth_y'] = u(0.3, 0.48)
    ident['mouth_w'] = u(0.12, 0.28)
    ident['lip_t'] = u(0.02, 0.06)
    ident['lips'] = np.clip(ident['skin'] * np.array([u(0.75, 1.0), u(0.35, 0.65),
                                                        u(0.35, 0.65)]), 0, 1).astype(np.float32)
    if u() < 0.15:
        ident['lips'] = _hsv(u(0, 360), u(0.5, 0.9), u(0.3, 0.8))  # lipstick
    # Ears.
    ident['ear_r'] = u(0.06, 0.14) if u() < 0.8 else 0.0
    # Skin texture with a per-identity layout.
    ident['texture'] = TEXTURES[rng.integers(len(TEXTURES))]
    ident['tex_color'] = np.clip(ident['skin'] * u(0.3, 0.7) + rng.normal(0, 0.05, 3),
                                  0, 1).astype(np.float32)
    if u() < 0.7:
        ident['tex_color'] = _hsv(u(0, 360), u(0.5, 0.95), u(0.2, 0.95))  # paint / tattoo
    ident['tex_xy'] = np.stack([u(-0.5, 0.5, 30), u(-0.35, 0.6, 30)], 1)
    ident['tex_r'] = u(0.05, 0.12)
    ident['tex_angle'] = u(-0.7, 0.7)
    ident['tex_n'] = int(rng.integers(2, 5))
    ident['tex_side'] = 1 if u() < 0.5 else -1
    # Accessories that are part of who the person is (always worn).
    ident['glasses'] = u() < 0.25
    ident['glasses_color'] = _hsv(u(0, 360), u(0, 0.8), u(0.05, 0.8))
    ident['glasses_round'] = u() < 0.5
    ident['beard'] = int(rng.integers(4)) if u() < 0.3 else 0   # 1 full, 2 goatee, 3 moustache
    ident['beard_color'] = np.clip(ident['hair'] * u(0.7, 1.1), 0, 1).astype(np.float32)
    return ident


def _color(c, alpha=1.0):
    return (float(c[0]), float(c[1]), float(c[2]), float(alpha))


class _Canvas:
    """An RGBA float32 canvas with face-unit drawing helpers (subpixel via cv2 shift)."""

    SHIFT = 4

    def __init__(self, size, yaw=0.0):
        self.size = size
        self.img = np.zeros((size, size, 4), np.float32)
        self.scale = size / 2.0 * _FACE_SCALE
        self.c = size / 2.0
        self.cy = size / 2.0 + 0.02 * size
        self.cos_yaw, self.sin_yaw = math.cos(yaw), math.sin(yaw)

    def pt(self, x, y, z=0.0):
        """Project a face-unit point with depth z (towards the viewer) to canvas pixels."""
        px = self.c + (x * self.cos_yaw + 0.6 * z * self.sin_yaw) * self.scale
        py = self.cy + y * self.scale
        return px, py

    def _fix(self, px, py):
        f = 1 << self.SHIFT
        return int(round(px * f)), int(round(py * f))

    def poly(self, pts, color, target=None):
        arr = np.array([self._fix(*self.pt(*p)) for p in pts], np.int32)
        cv2.fillPoly(self.img if target is None else target, [arr], _color(color),
                     cv2.LINE_8, self.SHIFT)

    def ellipse(self, x, y, ax, ay, color, z=0.0, angle=0.0, thickness=-1, arc=(0, 360),
                target=None, squash=True):
        px, py = self.pt(x, y, z)
        sx = self.cos_yaw if squash else 1.0
        axes = (max(1, int(round(ax * self.scale * sx * (1 << self.SHIFT)))),
                max(1, int(round(ay * self.scale * (1 << self.SHIFT)))))
        th = thickness if thickness < 0 else max(1, int(round(thickness * self.scale)))
        cv2.ellipse(self.img if target is None else target, self._fix(px, py), axes,
                    math.degrees(angle), arc[0], arc[1], _color(color), th, cv2.LINE_8,
                    self.SHIFT)

    def line(self, pts, color, thickness, z=0.0, target=None):
        arr = np.array([self._fix(*self.pt(x, y, z)) for x, y in pts], np.int32)
        th = max(1, int(round(thickness * self.scale)))
        cv2.polylines(self.img if target is None else target, [arr], False, _color(color), th,
                      cv2.LINE_8, self.SHIFT)


def _face_outline(ident, n=48):
    """Points of the face outline (superellipse, narrower jaw, pointed chin) in face units."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    p = ident['face_p']
    x = np.sign(c) * np.abs(c) ** (2 / p) * ident['face_w']
    y = np.sign(s) * np.abs(s) ** (2 / p) * ident['face_h']
    low = np.clip(y / ident['face_h'], 0, 1)  # 0 at the middle, 1 at the chin
    x = x * (1 - (1 - ident['jaw']) * low ** 1.5)
    y = y + ident['chin'] * ident['face_h'] * np.clip(1 - np.abs(x) / ident['face_w'] * 2.5,
                                                       0, 1) * low
    return list(zip(x, y))


def _draw_hair_back(cv, ident, hair):
    st, vol, length = ident['hair_style'], ident['hair_volume'], ident['hair_length']
    fw, fh = ident['face_w'], ident['face_h']
    if st in ('long', 'bob'):
        bottom = -0.1 + (length * 0.9 if st == 'long' else 0.25 + 0.2 * length)
        half = fw + vol
        cv.poly([(-half, bottom), (-half, -fh * 0.3), (0, -fh - vol), (half, -fh * 0.3),
                 (half, bottom)], hair)
        cv.ellipse(0, -fh * 0.35, half, fh * 0.7 + vol, hair)
    elif st == 'bun':
        cv.ellipse(0, -fh - vol * 1.2, 0.13 + vol, 0.11 + vol * 0.6, hair)
    elif st == 'afro':
        cv.ellipse(0, -fh * 0.35, fw + 0.15 + vol, fh * 0.75 + vol, hair)
    elif st == 'ponytail':
        side = 1 if ident['part'] > 0 else -1
        cv.ellipse(side * (fw + 0.08), -0.05 + length * 0.3, 0.09 + vol * 0.4,
                   0.2 + length * 0.25, hair, z=-0.4 * side, angle=-side * 0.3)


def _draw_hair_front(cv, ident, hair, darker):
    st, vol = ident['hair_style'], ident['hair_volume']
    fw, fh, hl, part = ident['face_w'], ident['face_h'], ident['hairline'], ident['part']
    if st == 'bald':
        # a fringe of hair around the sides only
        for side in (-1, 1):
            cv.ellipse(side * fw * 0.92, -0.05, 0.06 + vol * 0.3, 0.2, hair, z=-0.3)
        return
    # crown: the upper half of an ellipse from the hairline over the top of the head
    top = -fh - vol
    cy0 = hl + 0.15
    rx, ry = fw + vol * 0.6, cy0 - top
    cap = [(rx * math.cos(a), cy0 - ry * math.sin(a)) for a in np.linspace(math.pi, 0, 13)]
    # the forehead edge: a hairline curve from the right temple back to the left
    edge = [(fw * 0.85, hl + 0.08), (fw * 0.4, hl), (part * fw, hl - 0.03), (-fw * 0.4, hl),
            (-fw * 0.85, hl + 0.08)]
    cv.poly(cap + edge, hair)
    if st == 'fringe':
        pts = [(-fw * 0.95, hl - 0.1)]
        for i in range(7):
            x = -fw * 0.95 + (i + 0.5) * fw * 1.9 / 7
            pts += [(x, hl + 0.12 + vol * 0.5 + 0.04 * math.sin(i * 2.1 + part * 5)),
                    (x + fw * 0.95 / 7, hl + 0.04)]
        pts.append((fw * 0.95, hl - 0.1))
        cv.poly(pts, hair)
    elif st == 'spiky':
        for i in range(7):
            x = -fw * 0.8 + i * fw * 1.6 / 6
            cv.poly([(x - 0.08, -fh * 0.75), (x + part * 0.2, top - vol * 1.5 - 0.03 * (i % 2)),
                     (x + 0.08, -fh * 0.75)], hair)
    elif st == 'side':
        cv.poly([(part * fw - 0.05, hl - 0.1), (-fw * 0.95, hl + 0.05 + vol),
                 (-fw * 1.0, hl - 0.15)], hair)
    elif st == 'crop':
        cv.line([(-fw * 0.6, hl - 0.06), (fw * 0.6, hl - 0.06)], darker, 0.02)
    elif st == 'mohawk':
        # shaved sides: redraw them in a darker stubble, then a tall central crest
        for side in (-1, 1):
            cv.poly([(side * rx, cy0), (side * rx * 0.95, cy0 - ry * 0.6),
                     (side * 0.12, top), (side * 0.12, hl)], ident['skin'] * 0.8)
        cv.poly([(-0.12, hl), (-0.14, top - vol * 1.5 - 0.1), (0.14, top - vol * 1.5 - 0.1),
                 (0.12, hl)], hair)


def _draw_texture(cv, ident, mask):
    tex = ident['texture']
    if tex == 'plain':
        return
    layer = cv.img.copy()
    col = ident['tex_color']
    xy, r = ident['tex_xy'], ident['tex_r']
    fw, ey, edx = ident['face_w'], ident['eye_y'], ident['eye_dx']
    if tex == 'freckles':
        for x, y in xy:
            cv.ellipse(x * 0.8, y * 0.5 + 0.15, 0.035, 0.035, col, z=0.5, target=layer)
    elif tex == 'spots':
        for x, y in xy[:ident['tex_n'] + 3]:
            cv.ellipse(x, y, r, r, col, z=0.5, target=layer)
    elif tex == 'stripes':
        a = ident['tex_angle']
        ca, sa = math.cos(a), math.sin(a)
        for i in range(ident['tex_n']):
            y = -0.4 + (i + 0.5) * 1.1 / ident['tex_n'] + xy[i, 1] * 0.1
            cv.line([(-0.8 * ca, y - 0.8 * sa), (0.8 * ca, y + 0.8 * sa)], col, r * 0.7, z=0.5,
                    target=layer)
    elif tex == 'birthmark':
        x, y = xy[0]
        cv.ellipse(x, y, r * 1.6, r * 1.2, col, z=0.5, angle=ident['tex_angle'], target=layer)
    elif tex == 'blush':
        for side in (-1, 1):
            cv.ellipse(side * edx * 1.2, 0.2, 0.12, 0.08, col, z=0.6, target=layer)
    elif tex == 'mask':    # a painted band across the eyes
        h = 0.06 + r * 0.8
        cv.poly([(-fw, ey - h), (fw, ey - h + ident['tex_angle'] * 0.1), (fw, ey + h),
                 (-fw, ey + h - ident['tex_angle'] * 0.1)], col, target=layer)
    elif tex == 'half':    # one side of the face painted
        x0 = xy[0, 0] * 0.2
        cv.poly([(x0, -1.0), (ident['tex_side'] * 1.0, -1.0), (ident['tex_side'] * 1.0, 1.0),
                 (x0 + ident['tex_angle'] * 0.2, 1.0)], col, target=layer)
    elif tex == 'forehead':  # a mark on the forehead
        x, y = xy[0, 0] * 0.3, ey - 0.25
        k = ident['tex_n']
        pts = [(x + (r + 0.04) * math.cos(2 * math.pi * i / k + ident['tex_angle']),
                y + (r + 0.04) * math.sin(2 * math.pi * i / k + ident['tex_angle']))
               for i in range(max(k, 3))]
        cv.poly(pts, col, target=layer)
    elif tex == 'cheeks':  # marks under the eyes
        for side in (-1, 1):
            x = side * edx
            cv.poly([(x - 0.08, ey + 0.1), (x + 0.08, ey + 0.1), (x, ey + 0.12 + r * 2.5)],
                    col, target=layer)
    m = mask[..., None] > 0
    cv.img[...] = np.where(m, layer, cv.img)


def _draw_eyes(cv, ident, expr):
    skin = ident['skin']
    for side in (-1, 1):
        x, y = side * ident['eye_dx'], ident['eye_y']
        r = ident['eye_r'] * (1.0 - 0.25 * max(0.0, side * expr['yaw']))  # far eye smaller
        ry = r * ident['eye_aspect'] * expr['open']
        brow_y = y - ident['brow_gap'] - r * ident['eye_aspect'] - expr['brow']
        slope = ident['brow_slope']
        cv.line([(x - side * r * 1.3, brow_y + slope * 0.1), (x + side * r * 1.3,
                                                              brow_y - slope * 0.1)],
                ident['brow_color'], ident['brow_t'], z=0.75)
        if ry < 0.012:  # blinking: a closed lid
            cv.line([(x - r, y), (x + r, y)], skin * 0.45, 0.022, z=0.7)
            continue
        cv.ellipse(x, y, r, ry, (0.95, 0.95, 0.93), z=0.7)
        ir = min(r * 0.55, ry * 1.2)
        gx = expr['gaze'] * r * 0.4
        cv.ellipse(x + gx, y, ir, min(ir, ry), ident['iris'], z=0.72)
        cv.ellipse(x + gx, y, ir * 0.45, min(ir, ry) * 0.45, (0.02, 0.02, 0.02), z=0.73)
        cv.ellipse(x, y, r, ry, skin * 0.5, z=0.7, thickness=0.012, arc=(180, 360))


def _draw_nose_mouth(cv, ident, expr):
    skin = ident['skin']
    ny = ident['eye_y'] + 0.05
    nl, nw = ident['nose_len'], ident['nose_w']
    shade = skin * 0.6
    if ident['nose_style'] == 0:    # triangle shadow
        cv.poly([(0, ny, 0.9), (nw, ny + nl, 1.0), (-nw, ny + nl, 1.0)],
                skin * 0.82)
    elif ident['nose_style'] == 1:  # side line and base
        cv.line([(0.01, ny), (nw * 0.7, ny + nl), (-nw * 0.4, ny + nl + 0.02)], shade, 0.02,
                z=1.0)
    else:                           # nostrils
        for side in (-1, 1):
            cv.ellipse(side * nw * 0.6, ny + nl, nw * 0.3, nw * 0.22, shade, z=1.0)
    my, mw = ident['mouth_y'], ident['mouth_w'] * (1 + 0.15 * expr['smile'])
    smile = expr['smile'] * 0.06
    if expr['mouth_open'] > 0.15:
        h = 0.03 + 0.09 * expr['mouth_open']
        cv.ellipse(0, my + h * 0.3, mw * 0.85, h, (0.25, 0.05, 0.05), z=0.8)
        cv.ellipse(0, my + h * 0.3, mw * 0.85, h, ident['lips'], z=0.8,
                   thickness=ident['lip_t'] * 0.8)
    else:
        pts = [(-mw, my - smile), (-mw * 0.5, my + smile * 0.3), (0, my + smile * 0.5),
               (mw * 0.5, my + smile * 0.3), (mw, my - smile)]
        cv.line(pts, ident['lips'], ident['lip_t'], z=0.8)


def _draw_beard(cv, ident):
    b, col = ident['beard'], ident['beard_color']
    fh, my, mw = ident['face_h'], ident['mouth_y'], ident['mouth_w']
    if b == 1:    # full beard along the jaw
        pts = [p for p in _face_outline(ident) if p[1] > 0.1]
        pts.sort(key=lambda p: math.atan2(p[1], p[0]))
        pts = [(x * 1.04, y * 1.04) for x, y in pts]
        inner = [(mw * 1.1, my - 0.06), (0, my + 0.1), (-mw * 1.1, my - 0.06)]
        cv.poly(pts[::-1] + inner[::-1], col)
    elif b == 2:  # goatee
        cv.ellipse(0, (my + fh) / 2 + 0.05, mw * 0.6, (fh - my) * 0.45, col, z=0.6)
    if b in (1, 3):  # moustache
        cv.poly([(-mw * 1.1, my + 0.01), (0, my - 0.08), (mw * 1.1, my + 0.01),
                 (0, my - 0.03)], col)


def _draw_glasses(cv, ident):
    col = ident['glasses_color']
    for side in (-1, 1):
        x, y, r = side * ident['eye_dx'], ident['eye_y'], ident['eye_r'] * 1.7
        if ident['glasses_round']:
            cv.ellipse(x, y, r, r * 0.85, col, z=0.9, thickness=0.025)
        else:
            cv.line([(x - r, y - r * 0.7), (x + r, y - r * 0.7), (x + r, y + r * 0.7),
                     (x - r, y + r * 0.7), (x - r, y - r * 0.7)], col, 0.025, z=0.9)
    cv.line([(-ident['eye_dx'] + ident['eye_r'] * 1.7, ident['eye_y']),
             (ident['eye_dx'] - ident['eye_r'] * 1.7, ident['eye_y'])], col, 0.02, z=1.0)


def _draw_face_layer(ident, expr, size, worn=None, worn_rng=None):
    """RGBA float canvas (size x size) of the face, hair and neck in the canonical frame."""
    cv = _Canvas(size, expr['yaw'])
    hair = ident['hair']
    darker = hair * 0.6
    skin = ident['skin']
    # clothes and neck (clothes colour is a nuisance, chosen per image)
    cv.poly([(-0.95, 1.2), (-0.85, 0.92), (-0.25, 0.8), (0.25, 0.8), (0.85, 0.92), (0.95, 1.2)],
            expr['clothes'])
    cv.poly([(-0.2, 0.4), (0.2, 0.4), (0.22, 0.92), (-0.22, 0.92)], skin * 0.85)
    _draw_hair_back(cv, ident, hair)
    if ident['ear_r'] > 0:
        for side in (-1, 1):
            cv.ellipse(side * ident['face_w'] * 0.98, ident['eye_y'] + 0.08,
                       ident['ear_r'] * 0.6, ident['ear_r'], skin * 0.92, z=-0.5 * side)
    outline = _face_outline(ident)
    cv.poly(outline, skin)
    mask = np.zeros((size, size), np.uint8)
    cv.poly(outline, (1, 1, 1), target=mask)
    _draw_texture(cv, ident, mask)
    _draw_eyes(cv, ident, expr)
    _draw_nose_mouth(cv, ident, expr)
    if ident['beard']:
        _draw_beard(cv, ident)
    _draw_hair_front(cv, ident, hair, darker)
    if ident['glasses']:
        _draw_glasses(cv, ident)
    if worn is not None:
        _draw_worn_occluder(cv, ident, worn, worn_rng)
    return cv.img


def _background(rng, size, clutter=1.0):
    """Background, float RGB in [0, 1]: a random colour with a mild gradient, plus up to
    ``3 * clutter`` large random shapes (a few large shapes vary more than many small ones)."""
    u = rng.uniform
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    a = u(0, 2 * math.pi)
    g = np.linspace(-1, 1, size, dtype=np.float32)
    t = ((math.cos(a) * g[None, :] + math.sin(a) * g[:, None]) * 0.5 + 0.5) * 0.3
    bg = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.float32)
    for _ in range(int(round(rng.integers(0, 4) * clutter))):
        col = tuple(float(v) for v in rng.uniform(0, 1, 3))
        x, y = int(u(0, size)), int(u(0, size))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(bg, (x, y), int(u(0.1, 0.4) * size), col, -1)
        elif kind == 1:
            w, h = int(u(0.1, 0.6) * size), int(u(0.1, 0.6) * size)
            cv2.rectangle(bg, (x, y), (x + w, y + h), col, -1)
        else:
            cv2.line(bg, (x, y), (int(u(0, size)), int(u(0, size))), col,
                     max(1, int(u(0.02, 0.08) * size)))
    return bg


OCCLUDERS = ('patch', 'bar', 'hand', 'sunglasses', 'cap', 'mask')
_FACE_OCCLUDERS = ('sunglasses', 'cap', 'mask')   # worn: drawn in the face's frame


def _draw_worn_occluder(cv, ident, kind, rng):
    """Sunglasses, a cap or a face mask, drawn on the face layer so they follow the pose."""
    u = rng.uniform
    col = rng.uniform(0, 1, 3).astype(np.float32)
    fw, fh, ey = ident['face_w'], ident['face_h'], ident['eye_y']
    if kind == 'sunglasses':
        dark = rng.uniform(0, 0.2, 3).astype(np.float32)
        r = u(0.1, 0.15)
        for side in (-1, 1):
            cv.ellipse(side * ident['eye_dx'], ey, r * 1.1, r * u(0.7, 0.9), dark, z=0.9)
        cv.line([(-ident['eye_dx'], ey), (ident['eye_dx'], ey)], dark, 0.03, z=1.0)
    elif kind == 'cap':  # covers the crown; the hair at the sides stays visible
        brim = ident['hairline'] - u(0.0, 0.1)
        top = -fh - ident['hair_volume'] - 0.02
        cv.ellipse(0, brim, fw * 0.85, brim - top, col, arc=(180, 360))
        cv.poly([(-fw * 0.85, brim), (fw * 0.85, brim), (fw * 0.4 + u(0, 0.2), brim + 0.06),
                 (-fw * 0.4 - u(0, 0.2), brim + 0.06)], col * 0.8)
    else:  # a face mask from the nose down
        y0 = ey + ident['nose_len'] * u(0.5, 0.9) + 0.05
        cv.poly([(-fw * 0.95, y0 + 0.05, 0.3), (0, y0 - 0.03, 0.9), (fw * 0.95, y0 + 0.05, 0.3),
                 (fw * 0.7, fh * 0.85, 0.3), (0, fh + 0.02, 0.6), (-fw * 0.7, fh * 0.85, 0.3)],
                0.6 + 0.4 * col)


def _draw_scene_occluder(img, kind, rng):
    """A patch, a bar or a hand in front of the face, in image coordinates, in place."""
    size = img.shape[0]
    u = rng.uniform
    col = tuple(float(v) for v in rng.uniform(0, 1, 3))
    if kind == 'patch':
        w, h = int(u(0.1, 0.25) * size), int(u(0.1, 0.25) * size)
        x, y = int(u(0.1, 0.9) * size - w / 2), int(u(0.1, 0.9) * size - h / 2)
        cv2.rectangle(img, (x, y), (x + w, y + h), col, -1)
    elif kind == 'bar':
        th = max(1, int(u(0.03, 0.08) * size))
        y0, y1 = int(u(0, size)), int(u(0, size))
        if rng.integers(2):
            cv2.line(img, (0, y0), (size, y1), col, th)
        else:
            cv2.line(img, (y0, 0), (y1, size), col, th)
    else:  # a hand: a skin-coloured ellipse coming in from below
        skin = tuple(float(v) for v in _pick(rng, _SKIN_ANCHORS, 0.05))
        cx, cy = int(u(0.15, 0.85) * size), int(u(0.75, 1.0) * size)
        cv2.ellipse(img, (cx, cy), (int(u(0.08, 0.15) * size), int(u(0.15, 0.25) * size)),
                    u(-45, 45), 0, 360, skin, -1)


# Strength of each nuisance at ``nuisance=1`` (see render_face). Angles in degrees, shift and
# scale as fractions of the image, yaw in radians, probabilities for occlusion and blur, noise as
# the largest standard deviation (pixel values in [0, 1]).
NUISANCE = dict(
    rotation=8.0,       # in-plane rotation, uniform in +-rotation degrees
    scale=0.06,         # face scale 1 +- scale
    shift=0.03,         # face shift +- shift * image size, each axis
    yaw=0.2,            # head turn, +- yaw radians (squashes the face, moves its features)
    expression=0.6,     # smile, open mouth, blinking, eyebrows, gaze
    exposure=0.1,       # gain exp(+-exposure)
    gradient=0.12,      # directional light: 1 +- gradient across the image
    temperature=0.03,   # colour temperature: R * (1+t), B * (1-t), t in +-temperature
    gamma=0.06,         # gamma exp(+-gamma)
    occlusion=0.08,     # probability of one occluder
    blur=0.1,           # probability of a Gaussian blur (sigma 0.3-0.8 output pixels)
    noise=0.015,        # Gaussian noise sigma, uniform in [0, noise]
    clutter=1.0,        # background shapes: 0..3 when 1, none when 0
)


def _strengths(nuisance):
    if isinstance(nuisance, dict):
        unknown = set(nuisance) - set(NUISANCE)
        if unknown:
            raise ValueError('unknown nuisance(s) %s; known: %s'
                             % (sorted(unknown), sorted(NUISANCE)))
        out = dict(NUISANCE)
        out.update(nuisance)
        return out
    k = float(nuisance)
    return {name: v * k for name, v in NUISANCE.items()}


def _sample_expression(rng, yaw, k):
    u = rng.uniform
    return dict(
        yaw=u(-1, 1) * yaw,
        smile=u(-0.5, 1.0) * k,
        mouth_open=(u(0, 1) if u() < 0.35 else 0.0) * k,
        open=1.0 + ((0.0 if u() < 0.12 else u(0.55, 1.2)) - 1.0) * k,
        brow=u(-0.02, 0.06) * k,
        gaze=u(-1, 1) * k,
        clothes=rng.uniform(0, 1, 3).astype(np.float32),
    )


def render_face(ident, rng, image_size=32, nuisance=1.0):
    """Render one image of ``ident`` with nuisances drawn from ``rng``: RGB uint8 (H, W, 3).

    ``nuisance`` scales every strength of :data:`NUISANCE` (0 gives a frontal, evenly lit,
    unoccluded, neutral face on an uncluttered gradient background), or is a dict overriding
    some of them.
    The random draws do not depend on the strengths, so two strengths render the same scene.
    """
    ns = _strengths(nuisance)
    size = image_size * _SUPERSAMPLE
    u = rng.uniform
    expr = _sample_expression(rng, ns['yaw'], ns['expression'])
    # occlusion: decided up front; worn occluders are drawn with the face, others over the image
    occluded, kind = u() < ns['occlusion'], OCCLUDERS[rng.integers(len(OCCLUDERS))]
    occ_rng = np.random.default_rng(rng.integers(1 << 62))
    worn = kind if occluded and kind in _FACE_OCCLUDERS else None
    face = _draw_face_layer(ident, expr, size, worn, occ_rng)
    bg = _background(np.random.default_rng(rng.integers(1 << 62)), size, ns['clutter'])
    # pose: in-plane rotation, scale and shift of the face layer
    angle = u(-1, 1) * ns['rotation']
    scale = 1.0 + u(-1, 1) * ns['scale']
    tx, ty = u(-1, 1) * ns['shift'] * size, u(-1, 1) * ns['shift'] * size
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += (tx, ty)
    face = cv2.warpAffine(face, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    alpha = face[..., 3:4]
    img = bg * (1 - alpha) + face[..., :3] * alpha
    # lighting: exposure, directional gradient, colour temperature, gamma
    gain = math.exp(u(-1, 1) * ns['exposure'])
    d = u(0, 2 * math.pi)
    g = np.linspace(-1, 1, size, dtype=np.float32)
    grad = 1.0 + u(0, 1) * ns['gradient'] * (math.cos(d) * g[None, :] + math.sin(d) * g[:, None])
    temp = u(-1, 1) * ns['temperature']
    tint = np.array([1 + temp, 1 + u(-0.3, 0.3) * ns['temperature'], 1 - temp], np.float32)
    img = img * (gain * grad[..., None]) * tint
    img = np.clip(img, 0, 1) ** math.exp(u(-1, 1) * ns['gamma'])
    if occluded and worn is None:
        _draw_scene_occluder(img, kind, occ_rng)
    img = cv2.resize(img.astype(np.float32), (image_size, image_size),
                     interpolation=cv2.INTER_AREA)
    # blur and sensor noise at the output resolution
    do_blur, sigma = u() < ns['blur'], u(0.3, 0.8)
    if do_blur:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img = img + rng.normal(0, 1, img.shape).astype(np.float32) * (u(0, 1) * ns['noise'])
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _identity(seed, index):
    return sample_identity(_rng(seed, _STREAM_ID, index))


def _image(seed, identity_index, image_index, image_size, nuisance=1.0, ident=None):
    if ident is None:
        ident = _identity(seed, identity_index)
    return render_face(ident, _rng(seed, _STREAM_IMG, identity_index, image_index), image_size,
                       nuisance)


def generate_faces(num_identities=SYNTHETIC_DEFAULTS['num_identities'],
                   images_per_identity=SYNTHETIC_DEFAULTS['images_per_identity'],
                   image_size=SYNTHETIC_DEFAULTS['image_size'], seed=SYNTHETIC_DEFAULTS['seed'],
                   first_identity=0, nuisance=1.0):
    """The training faces: ``(images, labels)``.

    images: uint8 (N, image_size, image_size, 3) RGB, N = num_identities * images_per_identity,
    grouped by identity; labels: int32 (N,) in ``0 .. num_identities-1`` (label = identity index
    minus ``first_identity``). Deterministic given ``seed``.
    """
    if image_size < 16:
        raise ValueError('image_size must be at least 16, got %r' % (image_size,))
    n = num_identities * images_per_identity
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.repeat(np.arange(num_identities, dtype=np.int32), images_per_identity)
    for i in range(num_identities):
        ident = _identity(seed, first_identity + i)
        for j in range(images_per_identity):
            images[i * images_per_identity + j] = _image(seed, first_identity + i, j, image_size,
                                                         nuisance, ident)
    return images, labels


def pair_identities(num_pairs=SYNTHETIC_DEFAULTS['num_pairs'],
                    num_heldout=SYNTHETIC_DEFAULTS['num_heldout'],
                    first_identity=SYNTHETIC_DEFAULTS['num_identities'],
                    seed=SYNTHETIC_DEFAULTS['seed']):
    """The pair plan: int array (num_pairs, 4) of (identity_a, image_a, identity_b, image_b).

    Pairs alternate same / different identity (pair 0 same), so any 10 consecutive folds are
    balanced. Identities are ``first_identity .. first_identity+num_heldout-1``; image indices
    are distinct across the whole plan, so no image appears twice.
    """
    if num_pairs % 2:
        raise ValueError('num_pairs must be even, got %r' % (num_pairs,))
    if num_heldout < 2:
        raise ValueError('num_heldout must be at least 2, got %r' % (num_heldout,))
    rng = _rng(seed, _STREAM_PAIRS, first_identity, num_heldout)
    used = np.zeros(num_heldout, np.int64)   # next unused image index per identity
    plan = np.empty((num_pairs, 4), np.int64)
    # Spread the identities evenly over the pairs.
    order = np.concatenate([rng.permutation(num_heldout)
                             for _ in range(2 * num_pairs // num_heldout + 2)])
    pos = 0
    for p in range(num_pairs):
        a = order[pos]
        pos += 1
        if p % 2 == 0:
            b = a
        else:
            b = order[pos]
            pos += 1
            while b == a:
                b = rng.integers(num_heldout)
        plan[p] = (first_identity + a, used[a], first_identity + b, used[b] + (a == b))
        used[a] += 1 + (a == b)
        if a != b:
            used[b] += 1
    return plan


def generate_pairs(num_pairs=SYNTHETIC_DEFAULTS['num_pairs'],
                   num_heldout=SYNTHETIC_DEFAULTS['num_heldout'],
                   image_size=SYNTHETIC_DEFAULTS['image_size'], seed=SYNTHETIC_DEFAULTS['seed'],
                   first_identity=SYNTHETIC_DEFAULTS['num_identities'], nuisance=1.0):
    """Verification pairs from identities held out of training: ``(images, issame)``.

    images: uint8 (2 * num_pairs, H, W, 3) RGB, pair i = images 2i and 2i+1; issame: bool
    (num_pairs,), alternating True / False. The identities are ``first_identity ..
    first_identity + num_heldout - 1``: pass the number of training identities as
    ``first_identity`` to keep them disjoint from :func:`generate_faces`'s.
    """
    plan = pair_identities(num_pairs, num_heldout, first_identity, seed)
    images = np.empty((2 * num_pairs, image_size, image_size, 3), np.uint8)
    cache = {}
    for p, (ia, ja, ib, jb) in enumerate(plan):
        for k, (i, j) in enumerate(((ia, ja), (ib, jb))):
            if i not in cache:
                cache[i] = _identity(seed, i)
            images[2 * p + k] = _image(seed, i, j, image_size, nuisance, cache[i])
    issame = plan[:, 0] == plan[:, 2]
    return images, issame


def _encode_jpeg(rgb, quality):
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError('cv2.imencode failed')
    return buf.tobytes()


def jpeg_roundtrip(images, quality=95):
    """Encode and decode RGB uint8 images as JPEG with OpenCV (as the dataset files are written)."""
    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = np.frombuffer(_encode_jpeg(im, quality), np.uint8)
        out[i] = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out


# ----------------------------------------------------------------------------- the dataset files


def make_faces_synthetic(root, num_identities=None, images_per_identity=None, num_heldout=None,
                         num_pairs=None, image_size=None, seed=None, jpeg_quality=95,
                         nuisance=1.0):
    """Write the ``faces-synthetic`` dataset into the existing folder ``root``.

    The standard layout of the d2l face datasets: ``%08d`` identity folders of JPEGs, the same
    images as ``train.rec`` + ``train.idx`` (InsightFace layout with header record),
    ``property`` and ``synthetic_val.bin`` (pairs of identities held out of training).
    Arguments default to ``SYNTHETIC_DEFAULTS``; ``nuisance`` scales every nuisance (pose,
    light, expression, occlusion, blur, noise; see :func:`render_face`), e.g. 2.5 for a set
    much harder than the default. Used by ``download_extract('faces-synthetic')``, which writes
    into a temporary folder and renames it when complete.
    """
    from .binfile import write_bin
    from .datasets import write_property
    from .recordio import FaceRecWriter

    d = SYNTHETIC_DEFAULTS
    num_identities = num_identities or d['num_identities']
    images_per_identity = images_per_identity or d['images_per_identity']
    num_heldout, num_pairs = num_heldout or d['num_heldout'], num_pairs or d['num_pairs']
    image_size = image_size or d['image_size']
    seed = d['seed'] if seed is None else seed
    images, labels = generate_faces(num_identities, images_per_identity, image_size, seed,
                                    nuisance=nuisance)
    with FaceRecWriter(os.path.join(root, 'train.rec')) as rec:
        for i, (img, label) in enumerate(zip(images, labels)):
            buf = _encode_jpeg(img, jpeg_quality)
            rec.add(int(label), buf)
            folder = os.path.join(root, '%08d' % label)
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, '%04d.jpg' % (i % images_per_identity)), 'wb') as f:
                f.write(buf)
    write_property(root, num_identities, (image_size, image_size), len(images))
    pair_images, issame = generate_pairs(num_pairs, num_heldout, image_size, seed,
                                         first_identity=num_identities, nuisance=nuisance)
    write_bin(os.path.join(root, SYNTHETIC_VAL + '.bin'),
              [_encode_jpeg(img, jpeg_quality) for img in pair_images], issame)
    return root


# Bumped whenever the generator's output changes, so that cached copies are rebuilt.
make_faces_synthetic.version = 2
