"""Benchmark shapes of the op (ANCHORS.md's S400 and its variants, the 1.3B mixer): no imports, so that the
PyTorch-side benchmark of the authors' kernels can share them without loading JAX."""

SHAPES = {
    "S400": dict(B=8, T=4096, H=6, K=128, V=256),
    "S400-T2048": dict(B=8, T=2048, H=6, K=128, V=256),
    "S400-T8192": dict(B=8, T=8192, H=6, K=128, V=256),
    "S400-T32768": dict(B=1, T=32768, H=6, K=128, V=256),
    "S400-B4": dict(B=4, T=4096, H=6, K=128, V=256),  # the 400M training run's micro-batch (16 x 4096, accum 4)
    "1.3B": dict(B=4, T=4096, H=6, K=256, V=512),
    "tiny": dict(B=1, T=128, H=2, K=32, V=32),  # CPU smoke run of bench_ops.py
}
