"""Data in: InsightFace RecordIO (``recordio``), verification ``.bin`` files (``binfile``),
image decoding (``images``), datasets and loaders (``datasets``), augmentation
(``augment``), the dataset hub and downloads (``hub``), the generated faces-synthetic set
(``synthetic``), 5-point alignment (``align``), face detection with dlib (``detect``), turning
photo folders into datasets (``prepare``), checking a dataset folder (``check``) and the
pasted-faces detection test set (``pasted_faces``).

Imports only from ``runtime``.
"""
