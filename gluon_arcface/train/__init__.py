"""Training: the settings and the command line built from them (``config``), learning-rate and
margin schedules (``schedules``), the training loop of the chapter (``training``), the
recipes scripts/train.py runs (``recipe``), several machines (``distributed``,
``launcher``), the model-parallel head (``parallel``) and the speed benchmark (``benchmark``).

The top stage: imports from every other one; nothing imports it.
"""
