"""Measuring and using trained models: the verification protocol (``verification``),
embeddings and comparisons of images and photos (``inference``) and the pictures
(``plotting``: training curves, ROC, face grids; from plain numbers and arrays).

Imports from ``runtime``, ``data``, ``nn`` and ``models``.
"""
