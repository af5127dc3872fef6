"""FaceFolderDataset, FaceRecordDataset and the chapter's load_data_face_rec."""
import os

import cv2
import numpy as onp
import pytest

import mxnet as mx
from mxnet import gluon

import gluon_arcface as gaf
from gluon_arcface.runtime.errors import FaceDataError, ImageDecodeError

SIZE = 8


def img_for(label, i):
    rgb = onp.zeros((SIZE, SIZE, 3), onp.uint8)
    rgb[:, :, 0] = 20 * label
    rgb[:, :, 1] = i
    rgb[:, :SIZE // 2, 2] = 255  # left half blue: shows flips
    return rgb


def png(rgb):
    return cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture
def data_dir(tmp_path):
    """Both layouts of the same 3 identities x 6 images, property and a .bin."""
    samples = []
    for label in range(3):
        folder = tmp_path / ('%08d' % label)
        folder.mkdir()
        for i in range(6):
            buf = png(img_for(label, i))
            (folder / ('%d.png' % i)).write_bytes(buf)
            samples.append((label, buf))
    gaf.write_face_rec(str(tmp_path / 'train.rec'), samples)
    gaf.write_property(str(tmp_path), 3, (SIZE, SIZE), 18)
    gaf.write_bin(str(tmp_path / 'lfw_small.bin'), [b for _, b in samples[:8]], [True] * 4)
    gaf.write_bin(str(tmp_path / 'cfp_fp.bin'), [b for _, b in samples[:4]], [False] * 2)
    return tmp_path


def labels_and_pixels(ds):
    return [(lab, int(img.asnumpy()[0, 0, 0]), int(img.asnumpy()[0, 0, 1])) for img, lab in ds]


def test_folder_and_record_datasets_agree(data_dir):
    folder = gaf.FaceFolderDataset(str(data_dir), num_classes=3, image_size=(SIZE, SIZE))
    rec = gaf.FaceRecordDataset(str(data_dir / 'train.rec'), num_classes=3)
    assert len(folder) == len(rec) == 18
    assert sorted(labels_and_pixels(folder)) == sorted(labels_and_pixels(rec))
    assert all(lab * 20 == red for lab, red, _ in labels_and_pixels(rec))


def test_transform_first(data_dir):
    ds = gaf.FaceRecordDataset(str(data_dir / 'train.rec')).transform_first(
        gaf.FaceTrainTransform(flip=False))
    x, y = ds[0]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == onp.float32 and y == 0
    assert x.max() == pytest.approx(1.0) and x.min() >= 0


def test_flip_is_random_left_right():
    t = gaf.FaceTrainTransform(seed=3)
    img = img_for(1, 0)
    outs = [t(img) for _ in range(40)]
    flipped = [o for o in outs if o[2, 0, -1] == 1.0]
    plain = [o for o in outs if o[2, 0, 0] == 1.0]
    assert len(flipped) + len(plain) == 40 and 8 < len(flipped) < 32
    onp.testing.assert_array_equal(flipped[0], plain[0][:, :, ::-1])
    again = gaf.FaceTrainTransform(seed=3)
    assert all(onp.array_equal(a, again(img)) for a in outs)  # seeded: repeatable


@pytest.mark.parametrize('layout', ['rec', 'folders'])
def test_load_data_face_rec(data_dir, layout):
    if layout == 'folders':
        os.remove(data_dir / 'train.rec')
    loader, val_set = gaf.load_data_face_rec(str(data_dir), ['lfw_small', 'cfp_fp'], 4)
    assert loader.dataset_info['source'].endswith('train.rec' if layout == 'rec' else
                                                  data_dir.name)
    batches = list(loader)
    assert len(batches) == 4  # 18 images, batches of 4, the last partial batch dropped
    X, y = batches[0]
    assert X.shape == (4, 3, SIZE, SIZE) and X.dtype == onp.float32
    seen = onp.concatenate([b[1].asnumpy() for b in batches])
    assert set(seen) <= {0, 1, 2} and len(seen) == 16
    orders = [onp.concatenate([b[1].asnumpy() for b in loader]) for _ in range(3)]
    assert any(not onp.array_equal(orders[0], o) for o in orders[1:])  # shuffled each epoch
    assert set(val_set) == {'lfw_small', 'cfp_fp'}
    data_list, issame = val_set['lfw_small']
    assert data_list[0].shape == (8, 3, SIZE, SIZE) and list(issame) == [True] * 4


def test_missing_val_target_lists_what_is_there(data_dir):
    with pytest.raises(FaceDataError, match=r"'lfw' not found.*cfp_fp, lfw_small"):
        gaf.load_data_face_rec(str(data_dir), ['lfw'], 4)


def test_fewer_images_than_a_batch(data_dir):
    with pytest.raises(FaceDataError, match='18 training images, fewer than one batch of 32'):
        gaf.load_data_face_rec(str(data_dir), [], 32)


def test_shards_of_a_distributed_run_cover_the_data_once(data_dir):
    seen = []
    for part in range(3):
        loader, _ = gaf.load_data_face_rec(str(data_dir), [], 2, num_parts=3, part_index=part,
                                           shuffle=False, num_workers=0)
        assert loader.dataset_info['images'] == 6
        seen += [(int(y), round(float(x[1, 0, 0]) * 255)) for X, Y in loader
                 for x, y in zip(X, Y)]
    assert len(seen) == len(set(seen)) == 18
    assert {lab for lab, _ in seen} == {0, 1, 2}


def test_process_workers(data_dir):
    """Worker processes give every image once per epoch (16 of 18: the partial batch is
    dropped), each with its own label and its pixels intact (possibly flipped)."""
    loader, _ = gaf.load_data_face_rec(str(data_dir), [], 4, num_workers=2, thread_pool=False)
    seen = []
    for X, y in loader:
        assert X.shape == (4, 3, SIZE, SIZE) and X.dtype == onp.float32
        for img, label in zip(X.asnumpy(), y.asnumpy()):
            red = round(float(img[0, 0, 0]) * 255)
            assert red == 20 * int(label)  # the image belongs to its label
            seen.append((int(label), round(float(img[1, 0, 0]) * 255)))  # (label, image index)
            blue = img[2, 0]  # one half blue, the other not: flipped or not, never mixed up
            assert sorted(set(onp.round(blue).tolist())) == [0.0, 1.0]
    assert len(seen) == 16 and len(set(seen)) == 16  # no image twice


def test_folder_names_must_be_class_ids(tmp_path):
    (tmp_path / 'Ann_Smith').mkdir()
    (tmp_path / 'Ann_Smith' / 'a.png').write_bytes(png(img_for(0, 0)))
    with pytest.raises(FaceDataError, match='named by class id.*Ann_Smith.*prepare_data'):
        gaf.FaceFolderDataset(str(tmp_path))


def test_skip_bad_images_is_opt_in_and_counted(data_dir):
    (data_dir / '00000001' / '3.png').write_bytes(b'\x89PNG broken')
    strict = gaf.FaceFolderDataset(str(data_dir))
    bad = [i for i, (p, _) in enumerate(strict.items)
           if p.endswith(os.path.join('00000001', '3.png'))][0]
    with pytest.raises(ImageDecodeError, match=r'00000001/3\.png: image does not decode'):
        strict[bad]
    lenient = gaf.FaceFolderDataset(str(data_dir), skip_bad=True)
    loader = gluon.data.DataLoader(lenient, batch_size=6, num_workers=2, thread_pool=True)
    assert sum(len(y) for _, y in loader) == 18  # replaced by the next good image
    assert len(lenient.skipped) == 1 and lenient.skipped[0][0].endswith('3.png')


def test_record_labels_checked_against_property(data_dir):
    ds = gaf.FaceRecordDataset(str(data_dir / 'train.rec'), num_classes=2)
    with pytest.raises(FaceDataError, match=r'train\.rec: record 13: label 2 is outside \[0, 2\)'):
        ds[12]


def test_image_size_checked_against_property(data_dir):
    ds = gaf.FaceRecordDataset(str(data_dir / 'train.rec'), image_size=(112, 112))
    with pytest.raises(FaceDataError, match=r'record 1: image is 8x8, property says 112x112'):
        ds[0]


def test_mxnet_gluon_vision_transforms_work_on_items(data_dir):
    from mxnet.gluon.data.vision import transforms
    ds = gaf.FaceRecordDataset(str(data_dir / 'train.rec'))
    x, _ = ds.transform_first(transforms.ToTensor())[0]
    assert isinstance(x, mx.np.ndarray) and x.shape == (3, SIZE, SIZE)
