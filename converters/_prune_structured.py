"""The ``[prune_structured]`` pass: remove whole channels with torch-pruning.

torch-pruning's ``DependencyGraph`` traces the model and groups every tensor
slice coupled to a channel (the conv's filters, the next layer's inputs, the
batch norm, residual adds, depthwise convs), so removing a channel really
makes every layer smaller; ``MetaPruner`` picks channels by importance. The
result is a plain, denser-but-smaller module: exported ONNX and TFLite
artifacts get smaller and faster with no sparse kernels needed.

A layer the graph cannot keep consistent (e.g. a hard-coded ``reshape`` of a
channel count) is found by pruning a *copy* first and running it; the
failing layer is named in ``UnprunableLayerError`` and the model is left
untouched. Attention heads: modules named in ``attention`` (with ``num_heads``
and q/k/v Linear children) lose ``heads_ratio`` of their heads and have their
``num_heads`` updated; ``nn.MultiheadAttention`` is left alone (torch-pruning's
head pruning fails on it here), see docs/compression.md.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgepack import ConfigError

from ._compress_errors import SparsityRangeError, UnprunableLayerError
from ._finetune import _scorer, seeded, train
from ._passreport import PassReport, measure, predict_logits

__all__ = ["IMPORTANCES", "StructuredPruneConfig", "count_macs", "run"]


def _magnitude() -> Any:
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=2)


def _lamp() -> Any:
    import torch_pruning as tp

    return tp.importance.LAMPImportance(p=2)


def _random() -> Any:
    import torch_pruning as tp

    return tp.importance.RandomImportance()


#: channel-importance criteria by recipe name
IMPORTANCES: dict[str, Callable[[], Any]] = {"magnitude": _magnitude, "lamp": _lamp, "random": _random}


@dataclass(frozen=True)
class StructuredPruneConfig:
    """Recipe section ``[prune_structured]``."""

    #: fraction of channels removed from each prunable layer
    ratio: float = 0.4
    importance: str = "magnitude"
    #: rank channels across layers (uneven widths) instead of the same ratio per layer
    global_pruning: bool = False
    iterative_steps: int = 1
    #: keep channel counts multiples of this (SIMD-friendly widths); 0 = no rounding
    round_to: int = 0
    #: module names (as in ``named_modules``) to leave unpruned
    ignore: tuple[str, ...] = ()
    #: attention modules whose heads to remove: each has a ``num_heads`` attribute and Linear
    #: children named q/k/v (or q_proj/k_proj/v_proj, query/key/value, or one fused qkv)
    attention: tuple[str, ...] = ()
    #: fraction of heads removed from each module in ``attention``
    heads_ratio: float = 0.0
    finetune_epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not 0.0 <= float(self.ratio) < 1.0:
            raise SparsityRangeError(f"structured pruning ratio must be in [0, 1), got {self.ratio!r}",
                                     where="[prune_structured] ratio", hint="0.4 removes 40% of the channels")
        if isinstance(self.heads_ratio, bool) or not 0.0 <= float(self.heads_ratio) < 1.0:
            raise SparsityRangeError(f"heads_ratio must be in [0, 1), got {self.heads_ratio!r}",
                                     where="[prune_structured] heads_ratio")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"[prune_structured] importance must be one of {sorted(IMPORTANCES)}",
                              where="[prune_structured] importance")
        if self.iterative_steps < 1 or self.round_to < 0 or self.finetune_epochs < 0:
            raise ConfigError("[prune_structured] needs iterative_steps >= 1, round_to >= 0, finetune_epochs >= 0",
                              where="[prune_structured]")


def count_macs(model: Any, example: Any) -> tuple[int, int]:
    """(MACs, params) for one forward pass on ``example``.

    MACs are counted from forward hooks on every Conv/Linear (out elements x in/groups x kernel):
    torch-pruning's ``count_ops_and_params`` reported 21 M for EfficientNet-Lite0 here (the
    published figure is ~0.4 G) because that model calls ``F.conv2d`` from a Conv2d subclass.
    Params are torch-pruning's count.
    """
    import torch
    import torch.nn as nn
    import torch_pruning as tp

    total = [0]

    def hook(m: Any, inputs: Any, out: Any) -> None:
        if isinstance(m, nn.Linear):
            total[0] += out.numel() * m.in_features
        else:
            k = int(np.prod(m.kernel_size))
            total[0] += out.numel() * (m.in_channels // m.groups) * k

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    _, params = tp.utils.count_ops_and_params(model, example)
    return int(total[0]), int(params)


def _ignored(model: Any, cfg: StructuredPruneConfig) -> list[Any]:
    import torch.nn as nn

    names = dict(model.named_modules())
    unknown = [n for n in cfg.ignore if n not in names]
    if unknown:
        raise ConfigError(f"[prune_structured] ignore names unknown module(s) {unknown}",
                          where="[prune_structured] ignore", hint="use names from model.named_modules()")
    layers = [names[n] for n in cfg.ignore]
    heads = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if heads:
        layers.append(heads[-1])  # the output layer's width is the task's (classes), never pruned
    layers += [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return layers


_QKV = (("q", "k", "v"), ("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("qkv",))


def _attention(model: Any, cfg: StructuredPruneConfig) -> dict[Any, list[Any]]:
    """Attention module -> its q/k/v Linear layers, for the names in ``cfg.attention``.

    Raises:
        ConfigError: a name that is not a module with ``num_heads`` and q/k/v Linear children.
    """
    import torch.nn as nn

    mods = dict(model.named_modules())
    out = {}
    for name in cfg.attention:
        m = mods.get(name)
        kids = dict(m.named_children()) if m is not None else {}
        qkv = next(([kids[n] for n in names] for names in _QKV if all(isinstance(kids.get(n), nn.Linear)
                                                                      for n in names)), None)
        if m is None or qkv is None or not isinstance(getattr(m, "num_heads", None), int):
            raise ConfigError(f"[prune_structured] attention '{name}' is not a module with an int num_heads and "
                              "Linear q/k/v children", where="[prune_structured] attention",
                              hint="name modules with q/k/v (or q_proj/k_proj/v_proj, query/key/value, qkv) Linears")
        out[m] = qkv
    return out


def _prune(model: Any, example: Any, cfg: StructuredPruneConfig) -> None:
    import torch_pruning as tp

    attn = _attention(model, cfg)
    heads = {lin: m.num_heads for m, qkv in attn.items() for lin in qkv}
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=IMPORTANCES[cfg.importance](),
                                      pruning_ratio=cfg.ratio, global_pruning=cfg.global_pruning,
                                      iterative_steps=cfg.iterative_steps, ignored_layers=_ignored(model, cfg),
                                      round_to=cfg.round_to or None, num_heads=heads,
                                      prune_num_heads=bool(heads) and cfg.heads_ratio > 0, prune_head_dims=False,
                                      head_pruning_ratio=cfg.heads_ratio)
        for _ in range(cfg.iterative_steps):
            pruner.step()
        for m, qkv in attn.items():
            # the module's forward reshapes by num_heads: it must follow what was removed
            m.num_heads = pruner.num_heads[qkv[0]]
    except ConfigError:
        raise
    except Exception as e:  # torch-pruning raises plain Python errors while tracing
        raise UnprunableLayerError(f"torch-pruning cannot build the dependency graph: {e}", layer="<graph>",
                                   hint="add the layer to [prune_structured] ignore") from e


def _check_forward(model: Any, example: Any) -> None:
    """Run the pruned model, naming the innermost layer that fails."""
    entered: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _i, n=n: entered.append(n))
             for n, m in model.named_modules() if n]
    done: set[str] = set()
    hooks += [m.register_forward_hook(lambda _m, _i, _o, n=n: done.add(n)) for n, m in model.named_modules() if n]
    try:
        model(example)
    except RuntimeError as e:
        failing = [n for n in entered if n not in done]
        layer = failing[-1] if failing else "<model>"
        raise UnprunableLayerError(
            f"after removing channels, layer '{layer}' fails: {e}", layer=layer, where=f"layer {layer}",
            hint=f"the dependency graph cannot see a channel count fixed inside '{layer}' (e.g. a hard-coded "
                 f"reshape); add its input producers to [prune_structured] ignore or rewrite it with "
                 f"x.flatten(1)/x.shape") from e
    finally:
        for h in hooks:
            h.remove()


def run(model: Any, config: StructuredPruneConfig | None = None, *, example: np.ndarray,
        train_x: np.ndarray | None = None, train_y: np.ndarray | None = None, eval_x: np.ndarray | None = None,
        eval_y: np.ndarray | None = None) -> tuple[Any, PassReport]:
    """Remove ``config.ratio`` of the channels; returns the pruned model and its report
    (params, MACs and eager latency before/after in ``details`` and the metrics).

    Raises:
        SparsityRangeError: a ratio outside [0, 1).
        UnprunableLayerError: a layer the dependency graph cannot handle (named); ``model`` is unchanged.
    """
    import torch

    cfg = config or StructuredPruneConfig()
    start = time.monotonic()
    seeded(cfg.seed)
    model.eval()
    ex = torch.as_tensor(example[:1])
    ref = predict_logits(model, eval_x) if eval_x is not None else None
    before = measure(model, eval_x, eval_y, ref, latency_x=example[:1])
    macs0, params0 = count_macs(model, ex)
    candidate = copy.deepcopy(model)
    _prune(candidate, ex, cfg)
    _check_forward(candidate, ex)
    if train_x is not None and cfg.finetune_epochs:
        t_logits = predict_logits(model, train_x) if train_y is None else None
        train(candidate, train_x, train_y, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
              seed=cfg.seed, teacher_logits=t_logits, score=_scorer(eval_x, eval_y, ref), desc="prune_structured")
    candidate.eval()
    macs1, params1 = count_macs(candidate, ex)
    after = measure(candidate, eval_x, eval_y, ref, latency_x=example[:1])
    details = {"heads": {n: getattr(dict(candidate.named_modules())[n], "num_heads", None) for n in cfg.attention},
               "macs_before": macs0, "macs_after": macs1, "params_before": params0, "params_after": params1,
               "mac_ratio": macs0 / max(macs1, 1), "latency_ms_before": before.latency_ms,
               "latency_ms_after": after.latency_ms}
    return candidate, PassReport("prune_structured", asdict(cfg), before, after, details, time.monotonic() - start)
