"""convext: convolutional networks whose hot kernels are typed Cython.

Convolution, zero padding, max-pooling, batch-norm and ReLU run as compiled NHWC
kernels; this package adds the layers, the loss, the optimizers and a Keras-style
Sequential model with fit, evaluate, predict, save and load.
"""

import os

# OpenMP threads that spin while they wait for work take the cores from everything
# else. On a 2-core machine with other processes running, a training step took
# 1516 ms with libgomp's default (spinning) wait and 290 ms with passive waiting,
# so convext asks for passive waiting unless the user has chosen. libgomp reads
# the variable once, when it is loaded with the compiled kernels just below.
# LIMITATION: on an idle machine passive waiting costs 10 to 15% (a step of
# batch 64 took 19.0-19.4 ms against 16.4-17.4 ms with libgomp's default spin),
# the price of waking a sleeping thread, about 0.1 ms, for each parallel loop. A
# user who sets OMP_WAIT_POLICY or GOMP_SPINCOUNT (GOMP_SPINCOUNT=300000 is
# libgomp's default spin) takes it back.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

try:
    from convext import _kernels
except ImportError as exc:
    raise ImportError(
        f"convext's compiled kernels are missing from {os.path.dirname(__file__)}: "
        f"install the package with `pip install .` and import it from outside the "
        f"source folder (whose convext/ holds no compiled extension)"
    ) from exc

from convext._threads import get_num_threads, set_num_threads
from convext.layers import BatchNorm, Conv2D, Dense, Flatten, Layer, MaxPool2D, ReLU
from convext.losses import softmax, softmax_cross_entropy
from convext.model import (
    Sequential,
    TrainingDiverged,
    default_architecture,
    load_model,
)
from convext.ops import (
    batchnorm_backward,
    batchnorm_forward,
    conv2d_backward,
    conv2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
    relu_backward,
    relu_forward,
    zero_pad,
    zero_pad_backward,
)
from convext.optim import SGD, Adam, Optimizer

__version__ = "0.1.0"


def build_info():
    """How this copy of convext was built and what it runs on: a dict."""
    from threadpoolctl import threadpool_info

    blas = [
        f"{pool.get('internal_api')} {pool.get('version')} "
        f"({pool.get('num_threads')} threads)"
        for pool in threadpool_info() if pool.get("user_api") == "blas"
    ]
    return {
        "version": __version__,
        "build": "profiling" if _kernels.profiling_build() else (
            "bounds-checked" if _kernels.bounds_checked() else "release"),
        "instructions": "native" if _kernels.native_build() else "portable",
        "openmp": _kernels.openmp_enabled(),
        "threads": get_num_threads(),
        "blas": blas,
    }


__all__ = [
    "Adam", "BatchNorm", "Conv2D", "Dense", "Flatten", "Layer", "MaxPool2D",
    "Optimizer", "ReLU", "SGD", "Sequential", "TrainingDiverged", "batchnorm_backward",
    "batchnorm_forward", "build_info", "conv2d_backward", "conv2d_forward",
    "default_architecture", "get_num_threads", "load_model", "maxpool2d_backward",
    "maxpool2d_forward", "relu_backward", "relu_forward", "set_num_threads",
    "softmax", "softmax_cross_entropy", "zero_pad", "zero_pad_backward",
]
