"""The machine underneath: the package's exceptions (``errors``), atomic file writes
(``fileio``), CPU thread policy and CPU facts (``threads``), device lists (``devices``) and
what every command-line script shares (``cli``). ``_mxnet`` loads MXNet with NumPy semantics.

Imports only the standard library, NumPy and MXNet: every other stage builds on this one.
"""
