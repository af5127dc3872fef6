"""Shared fixtures: fixed seeds for every test."""
import random

import numpy as onp
import pytest

import gluon_arcface  # noqa: F401  (switches MXNet to NumPy semantics, as the chapter does)
import mxnet as mx


@pytest.fixture(autouse=True)
def fixed_seeds():
    random.seed(0)
    onp.random.seed(0)
    mx.random.seed(0)
    yield
