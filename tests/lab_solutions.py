"""Reference solutions of the lab pieces, in numpy as a student writes them, and planted bugs.

They exist to test the checker (it must pass these and fail the bugs) and to draw the worked lab's figures; the stubs
`deepcourse new-plugin --kind lab` writes do not contain them.
"""
from __future__ import annotations

import numpy as np

# -- layers ----------------------------------------------------------------------------------------------------------


def affine_forward(x, params):
    out = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    return out, (x, params["w"])


def affine_backward(dout, cache):
    x, w = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    return dx, {"w": dw, "b": dout.sum(axis=0)}


def affine_backward_missing_transpose(dout, cache):
    """Planted bug: dx = dout @ w instead of dout @ w.T (only square weights keep the shapes right)."""
    x, w = cache
    dx = (dout @ w).reshape(x.shape)
    return dx, {"w": x.reshape(x.shape[0], -1).T @ dout, "b": dout.sum(axis=0)}


def relu_forward(x, params):
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def batchnorm_forward(x, params, config):
    gamma, beta, eps = params["gamma"], params["beta"], config["eps"]
    if config["mode"] == "train":
        mean, var = x.mean(axis=0), x.var(axis=0)
        n = x.shape[0]
        m = config["momentum"]
        config["running_mean"] = (1 - m) * config["running_mean"] + m * mean
        unbiased = var * n / (n - 1) if n > 1 else np.full_like(var, np.nan)
        config["running_var"] = (1 - m) * config["running_var"] + m * unbiased
    else:
        mean, var = config["running_mean"], config["running_var"]
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    return gamma * xhat + beta, (xhat, gamma, inv, config["mode"])


def batchnorm_backward(dout, cache):
    xhat, gamma, inv, mode = cache
    dgamma, dbeta = (dout * xhat).sum(axis=0), dout.sum(axis=0)
    dxhat = dout * gamma
    if mode == "test":
        return dxhat * inv, {"gamma": dgamma, "beta": dbeta}
    n = dout.shape[0]
    dx = inv / n * (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
    return dx, {"gamma": dgamma, "beta": dbeta}


def batchnorm_backward_without_mean_term(dout, cache):
    """Planted bug: the gradient through the batch mean forgotten."""
    xhat, gamma, inv, mode = cache
    dxhat = dout * gamma
    n = dout.shape[0]
    dx = inv / n * (n * dxhat - xhat * (dxhat * xhat).sum(axis=0))
    return dx, {"gamma": (dout * xhat).sum(axis=0), "beta": dout.sum(axis=0)}


def layernorm_forward(x, params, config):
    mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    inv = 1.0 / np.sqrt(var + config["eps"])
    xhat = (x - mean) * inv
    return params["gamma"] * xhat + params["beta"], (xhat, params["gamma"], inv)


def layernorm_backward(dout, cache):
    xhat, gamma, inv = cache
    dxhat = dout * gamma
    d = xhat.shape[1]
    dx = inv / d * (d * dxhat - dxhat.sum(axis=1, keepdims=True) - xhat * (dxhat * xhat).sum(axis=1, keepdims=True))
    return dx, {"gamma": (dout * xhat).sum(axis=0), "beta": dout.sum(axis=0)}


def groupnorm_forward(x, params, config):
    n, c, h, w = x.shape
    g = config["groups"]
    xg = x.reshape(n, g, -1)
    mean, var = xg.mean(axis=2, keepdims=True), xg.var(axis=2, keepdims=True)
    inv = 1.0 / np.sqrt(var + config["eps"])
    xhat = ((xg - mean) * inv).reshape(x.shape)
    gamma, beta = params["gamma"].reshape(1, c, 1, 1), params["beta"].reshape(1, c, 1, 1)
    return gamma * xhat + beta, (xhat, gamma, inv, g)


def groupnorm_backward(dout, cache):
    xhat, gamma, inv, g = cache
    n, c, h, w = dout.shape
    dgamma, dbeta = (dout * xhat).sum(axis=(0, 2, 3)), dout.sum(axis=(0, 2, 3))
    dxhat = (dout * gamma).reshape(n, g, -1)
    xh = xhat.reshape(n, g, -1)
    m = xh.shape[2]
    dx = inv / m * (m * dxhat - dxhat.sum(axis=2, keepdims=True) - xh * (dxhat * xh).sum(axis=2, keepdims=True))
    return dx.reshape(dout.shape), {"gamma": dgamma, "beta": dbeta}


def dropout_forward(x, params, config):
    p = config["p"]
    if config["mode"] != "train":
        return x, None
    keep = np.random.default_rng(config["seed"]).random(x.shape) >= p
    mask = keep / (1 - p) if p < 1 else np.zeros_like(x)
    return x * mask, mask


def dropout_backward(dout, cache):
    return dout if cache is None else dout * cache


def conv_forward(x, params, config):
    w, b = params["w"], params["b"]
    s, pad = config["stride"], config["pad"]
    n, c, h, wd = x.shape
    f, _, hh, ww = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = 1 + (h + 2 * pad - hh) // s, 1 + (wd + 2 * pad - ww) // s
    out = np.zeros((n, f, ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = xp[:, :, i * s:i * s + hh, j * s:j * s + ww]
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w, s, pad)


def conv_backward(dout, cache):
    x, w, s, pad = cache
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    _, _, hh, ww = w.shape
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            window = xp[:, :, i * s:i * s + hh, j * s:j * s + ww]
            dw += np.tensordot(dout[:, :, i, j], window, axes=([0], [0]))
            dxp[:, :, i * s:i * s + hh, j * s:j * s + ww] += np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
    dx = dxp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]
    return dx, {"w": dw, "b": dout.sum(axis=(0, 2, 3))}


def conv_forward_off_by_one(x, params, config):
    """Planted bug: every window read one row too low (the padding's offset off by one); the shapes stay right."""
    w, b = params["w"], params["b"]
    s, pad = config["stride"], config["pad"]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad + 1), (pad, pad)))
    n, _, h, wd = x.shape
    f, _, hh, ww = w.shape
    ho, wo = 1 + (h + 2 * pad - hh) // s, 1 + (wd + 2 * pad - ww) // s
    out = np.zeros((n, f, ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = xp[:, :, i * s + 1:i * s + 1 + hh, j * s:j * s + ww]
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w, s, pad)


def maxpool_forward(x, params, config):
    ph, pw, s = config["pool_height"], config["pool_width"], config["stride"]
    n, c, h, w = x.shape
    ho, wo = 1 + (h - ph) // s, 1 + (w - pw) // s
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = x[:, :, i * s:i * s + ph, j * s:j * s + pw].max(axis=(2, 3))
    return out, (x, ph, pw, s)


def maxpool_backward(dout, cache):
    x, ph, pw, s = cache
    dx = np.zeros_like(x)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            window = x[:, :, i * s:i * s + ph, j * s:j * s + pw]
            hit = window == window.max(axis=(2, 3), keepdims=True)
            dx[:, :, i * s:i * s + ph, j * s:j * s + pw] += hit * dout[:, :, i, j][:, :, None, None]
    return dx, {}


# -- losses ----------------------------------------------------------------------------------------------------------


def softmax_loss(scores, y):
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = scores.shape[0]
    loss = -log_probs[np.arange(n), y].mean()
    d = np.exp(log_probs)
    d[np.arange(n), y] -= 1
    return loss, d / n


def svm_loss(scores, y):
    n = scores.shape[0]
    margins = np.maximum(0, scores - scores[np.arange(n), y][:, None] + 1)
    margins[np.arange(n), y] = 0
    d = (margins > 0).astype(float)
    d[np.arange(n), y] = -d.sum(axis=1)
    return margins.sum() / n, d / n


# -- update rules ----------------------------------------------------------------------------------------------------


def sgd(w, dw, config):
    return w - config["learning_rate"] * dw, config


def sgd_momentum(w, dw, config):
    v = config.get("velocity", np.zeros_like(w))
    v = config["momentum"] * v - config["learning_rate"] * dw
    config["velocity"] = v
    return w + v, config


def rmsprop(w, dw, config):
    cache = config.get("cache", np.zeros_like(w))
    cache = config["decay_rate"] * cache + (1 - config["decay_rate"]) * dw ** 2
    config["cache"] = cache
    return w - config["learning_rate"] * dw / (np.sqrt(cache) + config["epsilon"]), config


def adam(w, dw, config):
    m, v, t = config.get("m", np.zeros_like(w)), config.get("v", np.zeros_like(w)), config.get("t", 0) + 1
    b1, b2 = config["beta1"], config["beta2"]
    m = b1 * m + (1 - b1) * dw
    v = b2 * v + (1 - b2) * dw ** 2
    config.update(m=m, v=v, t=t)
    mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return w - config["learning_rate"] * mhat / (np.sqrt(vhat) + config["epsilon"]), config


def adam_without_bias_correction(w, dw, config):
    """Planted bug: the moving averages used as they are, so the first steps are far too small."""
    m, v, t = config.get("m", np.zeros_like(w)), config.get("v", np.zeros_like(w)), config.get("t", 0) + 1
    m = config["beta1"] * m + (1 - config["beta1"]) * dw
    v = config["beta2"] * v + (1 - config["beta2"]) * dw ** 2
    config.update(m=m, v=v, t=t)
    return w - config["learning_rate"] * m / (np.sqrt(v) + config["epsilon"]), config


#: reference -> the functions registering it needs (layer: forward, backward; loss and update rule: one function)
SOLUTIONS = {
    "layer": {"affine": (affine_forward, affine_backward), "relu": (relu_forward, relu_backward),
              "batchnorm": (batchnorm_forward, batchnorm_backward),
              "layernorm": (layernorm_forward, layernorm_backward),
              "groupnorm": (groupnorm_forward, groupnorm_backward), "dropout": (dropout_forward, dropout_backward),
              "conv": (conv_forward, conv_backward), "maxpool": (maxpool_forward, maxpool_backward)},
    "loss": {"softmax": softmax_loss, "svm": svm_loss},
    "update": {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam},
}
