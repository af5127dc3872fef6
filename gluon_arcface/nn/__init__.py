"""The networks: FaceResNet, TrainBlock and TestBlock (``model``), the margin heads
ArcMarginBlock and SoftmaxBlock (``margin``), mixed precision (``precision``), the running of a
network over images in batches (``embed``), dlib's face ResNet and its file reader
(``dlib_resnet``, ``dlib_dat``), and a PyTorch twin of FaceResNet for speed comparisons
(``torch_reference``).

Imports only from ``runtime`` and ``data``.
"""
