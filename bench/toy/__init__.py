"""The toy world: an offline text-to-image world that runs on a CPU (DESIGN.md, "The toy world").

* :mod:`bench.toy.world`: scenes, captions and images generated from a seed; the ``toy`` suite draws.
* :mod:`bench.toy.models`: the toy teacher (SD-1.5 component classes) and metric models (configs).
* :mod:`bench.toy.train`: ``python -m bench toy train`` reproduces every toy checkpoint from scratch.
* :mod:`bench.toy.checkpoints`, :mod:`bench.toy.load`: hash-checked loading of the committed checkpoints.
* :mod:`bench.toy.suite`: the ``toy`` suite's reference/floor image folders, metric models and
  real-image rows, used by ``bench run`` and ``bench eval``.

Submodules are imported on use; importing ``bench.toy`` itself loads nothing heavy.
"""
