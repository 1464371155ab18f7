"""dcn_lessons: the companion package of the Deformable ConvNets course.

Tiers (each tested against the one below it):

* :mod:`dcn_lessons.reference` -- NumPy references that read like the papers' equations.
* :mod:`dcn_lessons.ops` -- PyTorch operators with hand-written backward, and layers.
* :mod:`dcn_lessons.cuda` -- CuPy raw CUDA kernels from ``kernels/`` (optional, GPU only),
  plus a CPU emulator that runs the same kernel source without a GPU.
"""
from dcn_lessons.config import FAST, fast_or_full

__version__ = "0.1.0"
__all__ = ["FAST", "fast_or_full", "__version__"]
