"""The scaling law of a study's `scaling` grid: L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)
fitted as Chinchilla's approach 3 does: log L predicted as LSE(a - alpha log N, b - beta log D, e) (E = e^e, A = e^a,
B = e^b), a Huber loss (delta 1e-3) on its residuals, L-BFGS from a grid of initialisations, the best fit kept;
intervals from refitting bootstrap resamples of the points. N counts the model's parameters (tied embeddings once),
D the tokens trained; with C = k N D (k measured from the runs' counted FLOPs, 6 in Kaplan's approximation) the
compute-optimal size for a budget C minimises L(N, C / (k N)): N_opt = G (C / k)^(beta / (alpha + beta)),
G = (alpha A / (beta B))^(1 / (alpha + beta))."""
from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

HUBER_DELTA = 1e-3
GRID = {"e": (0.0, 1.0, 2.0), "a": (0.0, 5.0, 10.0), "b": (0.0, 5.0, 10.0), "alpha": (0.2, 0.6, 1.2),
        "beta": (0.2, 0.6, 1.2)}


def predicted_log_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    e, a, b, alpha, beta = theta
    return logsumexp(np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)]), axis=0)


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    small = np.abs(r) <= delta
    return np.where(small, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta))


def _fit(log_n, log_d, log_l, inits) -> tuple[np.ndarray, float]:
    def loss_and_gradient(theta):
        e, a, b, alpha, beta = theta
        terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
        lse = logsumexp(terms, axis=0)
        r = lse - log_l
        slope = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # huber'(r)
        w = np.exp(terms - lse)  # d lse / d term
        grad = np.array([slope @ w[2], slope @ w[0], slope @ w[1], -slope @ (w[0] * log_n), -slope @ (w[1] * log_d)])
        return float(huber(r).sum()), grad

    best, best_loss = None, np.inf
    bounds = [(None, None)] * 3 + [(0.0, 5.0)] * 2  # exponents stay non-negative (a loss that grows with N or D)
    for init in inits:
        result = minimize(loss_and_gradient, np.asarray(init, dtype=float), jac=True, method="L-BFGS-B",
                          bounds=bounds)
        if result.fun < best_loss:
            best, best_loss = result.x, float(result.fun)
    return best, best_loss


def parameters(theta: np.ndarray) -> dict[str, float]:
    e, a, b, alpha, beta = theta
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha),
            "beta": float(beta)}


def compute_optimal(p: dict[str, float], budget: float, k: float) -> tuple[float, float]:
    """(N_opt, D_opt) minimising L(N, D) subject to k N D = budget."""
    alpha, beta = p["alpha"], p["beta"]
    if alpha <= 0 or beta <= 0:
        return float("nan"), float("nan")
    g = (alpha * p["A"] / (beta * p["B"])) ** (1 / (alpha + beta))
    n = g * (budget / k) ** (beta / (alpha + beta))
    return float(n), float(budget / k / n)


def fit_scaling_law(n: list[float], d: list[float], loss: list[float], budgets: list[float], k: float,
                    bootstrap: int = 200, seed: int = 0) -> dict:
    """The fit of L(N, D) to the points, its bootstrap intervals (5th-95th percentiles) and the compute-optimal N
    and D for each budget."""
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    theta, best = _fit(log_n, log_d, log_l, itertools.product(*GRID.values()))
    fitted = parameters(theta)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(n), len(n))
        if len(set(idx.tolist())) < 5:  # fewer distinct points than parameters: no fit
            continue
        starts = [theta, *(theta + rng.normal(0, 0.5, 5) * [1, 1, 1, 0.2, 0.2] for _ in range(3))]
        starts = [np.concatenate([s[:3], np.clip(s[3:], 0.0, 5.0)]) for s in starts]
        samples.append(parameters(_fit(log_n[idx], log_d[idx], log_l[idx], starts)[0]))
    intervals = {key: [float(np.percentile([s[key] for s in samples], q)) for q in (5, 95)] if samples else None
                 for key in fitted}
    optimal = []
    for c in budgets:
        n_opt, d_opt = compute_optimal(fitted, c, k)
        spread = [compute_optimal(s, c, k)[0] for s in samples]
        spread = [x for x in spread if np.isfinite(x)]
        optimal.append({"budget": c, "N_opt": n_opt, "D_opt": d_opt,
                        "N_opt_interval": [float(np.percentile(spread, q)) for q in (5, 95)] if spread else None})
    residuals = predicted_log_loss(theta, log_n, log_d) - log_l
    return {"law": "L(N, D) = E + A / N^alpha + B / D^beta", **fitted, "intervals": intervals,
            "bootstrap_fits": len(samples), "huber_delta": HUBER_DELTA, "objective": best,
            "max_abs_log_residual": float(np.abs(residuals).max()), "flops_per_param_token": k,
            "compute_optimal": optimal, "initialisations": int(np.prod([len(v) for v in GRID.values()]))}


def fitted_loss(fit: dict, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]
