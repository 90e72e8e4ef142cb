"""lipo: listwise preference optimization (LiPO, arXiv 2402.01878) on Ray.

This package init stays import-light on purpose: `import lipo.losses` must not pull in Ray, DeepSpeed or
transformers.
"""

__version__ = "0.1.0"
