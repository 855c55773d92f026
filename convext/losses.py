"""Softmax and cross-entropy, computed together for numerical stability."""

import numpy as np


def softmax(logits):
    """Row-wise softmax of (N, K) logits, shifted by each row's maximum so that
    exp never overflows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    Parameters
    ----------
    logits : ndarray of shape (N, K)
    labels : int ndarray of shape (N,), values in [0, K)

    Returns
    -------
    loss : float
        ``mean(logsumexp(logits) - logits[label])``, computed from shifted logits.
    dlogits : ndarray of shape (N, K)
        ``(softmax(logits) - onehot(labels)) / N``.
    probabilities : ndarray of shape (N, K)
    """
    func = "softmax_cross_entropy"
    if not isinstance(logits, np.ndarray) or logits.dtype.kind != "f":
        raise TypeError(f"{func}: logits must be a float ndarray, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.ndim != 2 or 0 in logits.shape:
        raise ValueError(f"{func}: logits must be 2-D (N, K) with N, K >= 1, got "
                         f"shape {logits.shape}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{func}: labels must hold integers, got dtype {labels.dtype}")
    n, n_classes = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"{func}: labels must have shape ({n},) to match logits of "
                         f"shape {logits.shape}, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"{func}: labels must be in 0..{n_classes - 1}, got values "
                         f"from {labels.min()} to {labels.max()}")
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1)
    loss = float(np.mean(np.log(sum_exp) - shifted[rows, labels]))

    probabilities = exp / sum_exp[:, None]
    dlogits = probabilities.copy()
    dlogits[rows, labels] -= 1.0
    dlogits /= n
    return loss, dlogits, probabilities
