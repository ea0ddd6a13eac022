"""How well a frozen backbone's features suit a labelled data set, measured without training the backbone.

``logme``: the LogME score of You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning" (ICML 2021), the evidence (marginal likelihood) of a Bayesian linear model from the features to each
class's one-vs-rest target, maximised over the prior precision alpha and the noise precision beta by the paper's
fixed-point iteration, averaged over classes and divided by the number of images. Higher is better; its scale
depends on the data set, so it compares backbones on one data set. ``linear_probe_accuracy``: the validation
accuracy of a linear classifier fitted on the training features.
"""

import math

import numpy as np
import torch
from numpy.typing import ArrayLike

TOLERANCE = 1e-12  # the fixed-point iteration stops when the evidence changes by less than this (relative)
MAX_ITERATIONS = 1000  # the paper's iteration converges in a few steps; this only bounds a pathological case
FLOOR = 1e-300  # keeps m'm and the residual positive when features are zero or fit a target exactly
PROBE_L2 = 1e-3  # the linear probe's weight decay, on standardised features
PROBE_ITERATIONS = 300


def logme(features: ArrayLike, labels: ArrayLike) -> float:
    """LogME of ``features`` (N, D) for integer class ``labels`` (N,): the mean over classes of evidence / N.

    One SVD of F serves every class: with F = U S V', F'F has eigenvalues sigma = S^2 (and D - rank zeros), and
    m'm, ||Fm - y||^2 and log|A| of the paper's Algorithm 1 follow from z = U'y in O(rank) per iteration.
    """
    f = np.asarray(features, dtype=np.float64)
    y_all = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y_all) or len(f) == 0:
        raise ValueError(f"features {f.shape} and labels {y_all.shape} must be (N, D) and (N,), N > 0")
    rounding = max(f.shape) * np.finfo(np.float64).eps  # numpy's matrix_rank cut-off: below it, a direction is 0
    if f.shape[1] > len(f):  # wide features (VGG16: 25088): U and S^2 from the N x N Gram matrix F F', cheaper
        sigma, u = np.linalg.eigh(f @ f.T)
        sigma = np.where(sigma > rounding * sigma.max(initial=0.0), sigma, 0.0)
    else:
        u, singular, _ = np.linalg.svd(f, full_matrices=False)
        sigma = np.where(singular > rounding * singular.max(initial=0.0), singular**2, 0.0)
    evidences = [_class_evidence(u, sigma, (y_all == k).astype(np.float64)) for k in np.unique(y_all)]
    return float(np.mean(evidences))


def _class_evidence(u: np.ndarray, sigma: np.ndarray, y: np.ndarray) -> float:
    """log p(y | F, alpha, beta) / N at the fixed point of the paper's alpha/beta iteration.

    The iteration stops when the evidence stops changing. That is also where alpha/beta converge, and it ends the
    two limits the fixed point can lie at: features that fit y exactly (N <= rank, beta grows without bound) and
    features that do not help (alpha grows without bound); the evidence converges in both.
    """
    n = len(y)
    z = u.T @ y
    # the part of y that no combination of the features reaches: none when U spans every direction of R^N
    outside = 0.0 if u.shape[1] >= n else float(np.sum((y - u @ z) ** 2))

    def evidence(alpha: float, beta: float) -> tuple[float, float, float, float]:
        """Evidence / N, gamma, m'm and ||Fm - y||^2 at (alpha, beta); m = beta A^-1 F'y, A = alpha I + beta F'F."""
        denominator = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / denominator))
        m_squared = float(np.sum(beta**2 * sigma * z**2 / denominator**2))
        residual = outside + float(np.sum((alpha / denominator) ** 2 * z**2))
        # D/2 log(alpha) - 1/2 log|A| with F'F's D - rank zero eigenvalues cancelled: -1/2 sum log(1 + beta sigma/alpha)
        log_ratio = float(np.sum(np.log1p(beta * sigma / alpha)))
        value = (n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi) - beta / 2 * residual
                 - alpha / 2 * m_squared - log_ratio / 2) / n
        return value, gamma, max(m_squared, FLOOR), max(residual, FLOOR)

    alpha, beta = 1.0, 1.0
    value, gamma, m_squared, residual = evidence(alpha, beta)
    for _ in range(MAX_ITERATIONS):
        alpha = gamma / m_squared if gamma > 0 else alpha  # gamma = 0: all-zero features, alpha is irrelevant
        beta = (n - gamma) / residual
        previous = value
        value, gamma, m_squared, residual = evidence(alpha, beta)
        if abs(value - previous) <= TOLERANCE * max(1.0, abs(value)):
            break
    return value


def linear_probe_accuracy(train_features: ArrayLike, train_labels: ArrayLike, val_features: ArrayLike,
                          val_labels: ArrayLike, l2: float = PROBE_L2) -> float:
    """Validation accuracy of a multinomial logistic regression fitted on the training features.

    Features are standardised with the training mean and standard deviation; the weights start at zero and
    L-BFGS minimises the mean cross-entropy plus ``l2``/2 ||W||^2 (float64, so the result is deterministic).
    """
    x = torch.as_tensor(np.asarray(train_features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    x_val = torch.as_tensor(np.asarray(val_features), dtype=torch.float64)
    y_val = torch.as_tensor(np.asarray(val_labels), dtype=torch.long)
    mean, std = x.mean(0), x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x, x_val = (x - mean) / std, (x_val - mean) / std
    classes = int(max(y.max(), y_val.max())) + 1
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=PROBE_ITERATIONS, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float(((x_val @ weight + bias).argmax(1) == y_val).double().mean())
