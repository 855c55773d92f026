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
    n = logits.shape[0]
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
