"""get_embedding, embedding files, comparing faces, export for deployment."""
import cv2
import numpy as onp
import pytest

import mxnet as mx
from mxnet import np

import gluon_arcface as gaf


@pytest.fixture(scope='module')
def test_net():
    mx.random.seed(0)
    train = gaf.TrainBlock(18, 16, 3, use_dropout=True)
    train(np.zeros((2, 3, 16, 16)), np.array([0, 1]))
    net = gaf.TestBlock(18, 16, True, params=train.collect_params())
    net.hybridize()
    return net


def image(seed, size=16):
    return onp.random.RandomState(seed).randint(0, 256, (size, size, 3)).astype(onp.uint8)


def test_get_embedding_is_the_chapters(test_net):
    img = image(1)
    emb = gaf.get_embedding(img, test_net, [mx.cpu(0)]).asnumpy()
    x = np.array(img.transpose(2, 0, 1)[None].astype('float32') / 255.0)
    # pixel * float32(1/255) (the package's one scaling) and pixel / 255 differ in the last bit
    onp.testing.assert_allclose(emb, test_net(x).asnumpy(), rtol=1e-4, atol=1e-5)
    assert emb.shape == (1, 16)


def test_embed_files_sums_flips_and_normalises(test_net, tmp_path):
    paths = []
    for i in range(3):
        path = str(tmp_path / ('face%d.png' % i))
        cv2.imwrite(path, cv2.cvtColor(image(i), cv2.COLOR_RGB2BGR))
        paths.append(path)
    emb = gaf.embed_files(paths, test_net, image_size=(16, 16), batch_size=2)
    assert emb.shape == (3, 16) and emb.dtype == onp.float32
    onp.testing.assert_allclose(onp.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    x = np.array(onp.stack([image(i).transpose(2, 0, 1) for i in range(3)]).astype('float32') / 255)
    raw = test_net(x).asnumpy() + test_net(x[:, :, :, ::-1]).asnumpy()
    onp.testing.assert_allclose(emb, raw / onp.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-4,
                                atol=1e-5)
    # Larger images are resized to the network's input size.
    big = gaf.embed_images([cv2.resize(image(0), (32, 32), interpolation=cv2.INTER_NEAREST)],
                           test_net, image_size=(16, 16))
    assert big.shape == (1, 16)
    with pytest.raises(gaf.FaceDataError, match='missing.png.*not found'):
        gaf.embed_files([str(tmp_path / 'missing.png')], test_net, image_size=(16, 16))


def test_compare_faces(test_net):
    sim, same = gaf.compare_faces(image(3), image(3), test_net, threshold=0.5, image_size=(16, 16))
    assert sim == pytest.approx(1.0, abs=1e-5) and same
    sim2, _ = gaf.compare_faces(image(3), image(4), test_net, threshold=0.5, image_size=(16, 16))
    assert sim2 < sim
    _, same = gaf.compare_faces(image(3), image(4), test_net, threshold=sim2 + 1e-3,
                                image_size=(16, 16))
    assert not same
    assert gaf.cosine_similarity(onp.ones(4), -onp.ones(4)) == pytest.approx(-1.0)


def test_export_and_import_give_equal_outputs(test_net, tmp_path):
    prefix = str(tmp_path / 'deploy' / 'faceresnet18')
    sym, params = gaf.export_embedding_net(test_net, prefix, image_size=(16, 16))
    assert sym.endswith('faceresnet18-symbol.json') and params.endswith('faceresnet18-0000.params')
    loaded = gaf.load_embedding_net(prefix, mx.cpu())
    x = np.random.uniform(size=(3, 3, 16, 16))
    onp.testing.assert_allclose(loaded(x).asnumpy(), test_net(x).asnumpy(), rtol=1e-5, atol=1e-6)
    embedder = gaf.FaceEmbedder.load(prefix, image_size=(16, 16), threshold=0.3)
    onp.testing.assert_allclose(embedder.embed([image(5)]),
                                gaf.embed_images([image(5)], test_net, image_size=(16, 16)),
                                rtol=1e-4, atol=1e-6)
    assert embedder.compare(image(5), image(5))[1]
    # A model that knows its input size and threshold (model.json, as train.py writes it).
    gaf.interop.write_model_info(str(tmp_path / 'deploy'), (16, 16), 16, 18,
                                 cos_threshold={'val': 0.25})
    embedder = gaf.FaceEmbedder.load(str(tmp_path / 'deploy' / 'faceresnet18'))
    assert embedder.image_size == (16, 16) and embedder.threshold == pytest.approx(0.25)
    with pytest.raises(FileNotFoundError, match='missing-symbol.json'):
        gaf.load_embedding_net(str(tmp_path / 'missing'))


def test_training_verification_and_photos_feed_the_network_the_same_tensor(tmp_path):
    """A mismatch between training and testing preprocessing is the classic cause of verification
    near 0.5: a photo (PNG, lossless) reaches the network identically from the training
    transform, a verification .bin and the photo-embedding path, resized or not."""
    from gluon_arcface.data.binfile import load_bin, write_bin
    from gluon_arcface.data.datasets import FaceTrainTransform
    from gluon_arcface.eval.inference import preprocess
    rng = onp.random.RandomState(0)
    photo = rng.randint(0, 256, size=(40, 36, 3)).astype(onp.uint8)
    png = cv2.imencode('.png', photo[:, :, ::-1])[1].tobytes()  # cv2 writes BGR
    path = str(tmp_path / 'pair.bin')
    write_bin(path, [png, png], [True])
    for size in [(40, 36), (24, 20)]:
        from_train = FaceTrainTransform(flip=False, image_size=size)(photo)
        from_bin = load_bin(path, image_size=size)[0][0][0].asnumpy()
        from_photo = preprocess(photo, size)
        assert from_train.dtype == from_photo.dtype == onp.float32
        assert from_train.shape == (3,) + size
        onp.testing.assert_array_equal(from_train, from_bin)
        onp.testing.assert_array_equal(from_train, from_photo)
        assert 0.0 <= from_train.min() and from_train.max() <= 1.0
