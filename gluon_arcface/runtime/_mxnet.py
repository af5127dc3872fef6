"""MXNet as every gluon_arcface module uses it: with NumPy semantics (``npx.set_np()``), as the
chapter does.

Each module that uses MXNet imports this one first, so whichever of them loads first, MXNet is
switched to NumPy semantics before any block or array is made. The package's ``__init__`` has
applied the thread policy before that (OpenMP reads its thread count when MXNet loads).
"""
from mxnet import npx

npx.set_np()
