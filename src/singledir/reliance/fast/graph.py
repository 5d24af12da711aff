"""torch.fx view of a model for the fast path: layer markers, the prefix/rest split, linear consumers.

Offers:

- :func:`trace_with_markers` -- symbolic trace in which the output of every analysed layer passes through
  a *marker* node (``call_function`` of :func:`layer_output`), whatever the layer is (a leaf such as
  ``nn.ReLU``, or a container such as a residual block, which is traced through). Raises
  :class:`TraceFailed` when the forward cannot be traced (data-dependent Python control flow, ...).
- :class:`Split` -- for a set of intervened layers: the *prefix* (nodes that no intervention can
  change: computed once per example chunk and cached), the *rest* (nodes downstream of a marker:
  recomputed per ablation level), and the *boundary* (prefix values the rest consumes: the cache).
- :func:`find_linear_chain` -- whether a marker feeds, through channel-separable linear ops only
  (average pools, flatten, identity, eval dropout), a single ``nn.Linear`` / ``nn.Conv*d``: then the
  consumer's output can be updated *incrementally* unit by unit (see :mod:`.walk`).
- :func:`run_node` -- execute one node given the values of its inputs (:func:`load_args`: a node's
  arguments with their values).

Why the split is exact: an ablation only changes values downstream of the ablated layer's marker. Every
node the markers do not reach computes the same value at every level, so computing it once and reusing it
gives bitwise the same inputs to the rest as a full forward pass would.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "LinearChain",
    "Split",
    "TraceFailed",
    "Traced",
    "find_linear_chain",
    "is_inplace",
    "layer_output",
    "run_node",
    "trace_with_markers",
]


class TraceFailed(Exception):
    """The model's forward could not be symbolically traced; the engine falls back to hooks."""


def layer_output(x, name: str):
    """Marker: identity on the output of layer ``name`` (the engine applies interventions here)."""
    return x


class _MarkerTracer(fx.Tracer):
    """Tracer that wraps the output of every analysed layer in a :func:`layer_output` marker node.

    Standard ``torch.nn`` modules stay leaves (``call_module`` nodes); user modules are traced through.
    An analysed layer that is a container is traced through too, and its output gets the marker.
    """

    def __init__(self, layers):
        super().__init__()
        self.layers = set(layers)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        out = super().call_module(m, forward, args, kwargs)
        if name in self.layers:
            out = self.create_proxy("call_function", layer_output, (out, name), {})
        return out


@dataclass
class Traced:
    """A traced model: the graph, its root module, and the marker nodes of each layer."""

    graph: fx.Graph
    root: nn.Module
    nodes: list  # topological order (graph order), output node excluded
    output: fx.Node
    markers: dict  # layer -> list of marker nodes (a module called twice has two)
    placeholder: fx.Node

    def module(self, target: str) -> nn.Module:
        cache = self.__dict__.setdefault("_modules_cache", {})
        m = cache.get(target)
        if m is None:
            m = cache[target] = self.root.get_submodule(target)
        return m

    def attr(self, target: str):
        obj = self.root
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj


def trace_with_markers(model: nn.Module, layers) -> Traced:
    """Trace ``model`` (already in eval mode) with markers after each layer in ``layers``."""
    tracer = _MarkerTracer(layers)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise TraceFailed(f"{type(exc).__name__}: {exc}") from exc
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TraceFailed(f"forward takes {len(placeholders)} inputs; the fast path needs exactly one")
    outputs = [n for n in graph.nodes if n.op == "output"]
    markers: dict[str, list] = {name: [] for name in layers}
    for n in graph.nodes:
        if n.op == "call_function" and n.target is layer_output:
            markers[n.args[1]].append(n)
    missing = [name for name, ms in markers.items() if not ms]
    if missing:
        raise TraceFailed(f"layers {missing} do not appear in the traced graph")
    nodes = [n for n in graph.nodes if n.op != "output"]
    return Traced(graph, model, nodes, outputs[0], markers, placeholders[0])


# --------------------------------------------------------------------------------------------------
# Node execution
# --------------------------------------------------------------------------------------------------
_INPLACE_FUNCS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.iand, operator.ior}


def is_inplace(node: fx.Node, traced: Traced) -> bool:
    """Whether ``node`` may modify its first argument in place (then the engine passes a copy)."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCS or bool(node.kwargs.get("inplace", False)) or getattr(
            node.target, "__name__", ""
        ).endswith("_")
    if node.op == "call_module":
        return bool(getattr(traced.module(node.target), "inplace", False))
    return False


def load_args(arg, env):
    """``arg`` (nested args of a node) with every node replaced by its value in ``env``."""
    return fx.node.map_arg(arg, lambda n: env[n])


def run_node(node: fx.Node, env, traced: Traced, first_arg=None):
    """Execute ``node`` with input values from ``env``; ``first_arg`` replaces its first argument."""
    args = load_args(node.args, env)
    kwargs = load_args(node.kwargs, env)
    if first_arg is not None:
        args = (first_arg, *args[1:])
    if node.op == "call_module":
        return traced.module(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, node.target)(*rest, **kwargs)
    if node.op == "get_attr":
        return traced.attr(node.target)
    raise RuntimeError(f"cannot run node {node.op} {node.target}")


# --------------------------------------------------------------------------------------------------
# Prefix / rest split
# --------------------------------------------------------------------------------------------------
@dataclass
class Split:
    """Partition of a traced graph for one set of intervened layers.

    ``rest`` holds the markers of the intervened layers and every node that depends on one; ``prefix``
    everything else (in graph order). ``boundary`` = prefix nodes used by rest nodes or by the output:
    the values cached per example chunk. ``downstream[m]`` = the rest nodes that depend on marker ``m``.
    ``roots`` = markers that depend on no other intervened marker.
    """

    traced: Traced
    layers: list
    prefix: list = field(default_factory=list)
    rest: list = field(default_factory=list)
    boundary: list = field(default_factory=list)
    markers: list = field(default_factory=list)  # intervened marker nodes
    marker_layer: dict = field(default_factory=dict)
    upstream_layers: dict = field(default_factory=dict)  # marker -> set of intervened layers above it
    last_use: dict = field(default_factory=dict)  # prefix node -> last prefix node using it

    @classmethod
    def build(cls, traced: Traced, layers) -> Split:
        s = cls(traced, list(layers))
        for layer in s.layers:
            for m in traced.markers[layer]:
                s.markers.append(m)
                s.marker_layer[m] = layer
        marker_set = set(s.markers)
        # reach[n] = set of intervened layers whose markers n depends on (a marker depends on itself).
        reach: dict = {}
        for n in traced.nodes:
            r = set()
            for a in n.all_input_nodes:
                r |= reach.get(a, set())
            if n in marker_set:
                s.upstream_layers[n] = set(r)
                r = r | {s.marker_layer[n]}
            reach[n] = r
        rest_set = set()
        for n in traced.nodes:
            if reach[n]:
                s.rest.append(n)
                rest_set.add(n)
            else:
                s.prefix.append(n)
        consumers = list(s.rest) + [traced.output]
        bset: dict = {}
        for n in consumers:
            for a in n.all_input_nodes:
                if a not in rest_set:
                    bset[a] = None
        s.boundary = list(bset)
        # last use of each prefix value inside the prefix, to free memory early
        keep = set(s.boundary)
        for n in s.prefix:
            for a in n.all_input_nodes:
                if a not in keep:
                    s.last_use[a] = n
        s.reach = reach
        # nodes computed from the input (per-example values); the rest are parameters and constants
        dep: set = set()
        for n in traced.nodes:
            if n.op == "placeholder" or any(a in dep for a in n.all_input_nodes):
                dep.add(n)
        s.input_dependent = dep
        # An in-place op in the prefix is only safe if no rest node reads its target before it in the
        # forward (the prefix now runs entirely before the rest).
        order = {n: i for i, n in enumerate(traced.nodes)}
        for n in s.prefix:
            if is_inplace(n, traced) and n.args and isinstance(n.args[0], fx.Node):
                target = n.args[0]
                if any(u in rest_set and order[u] < order[n] for u in target.users):
                    raise TraceFailed(f"in-place {n.target} modifies a value the ablated part reads earlier")
        return s

    def run_prefix(self, x: torch.Tensor) -> dict:
        """Evaluate the prefix on input ``x``; return ``{boundary node: value}`` (the cache)."""
        env = {}
        frees: dict = {}
        for a, n in self.last_use.items():
            frees.setdefault(n, []).append(a)
        for n in self.prefix:
            if n.op == "placeholder":
                env[n] = x
            else:
                env[n] = run_node(n, env, self.traced)
            for a in frees.get(n, ()):
                env.pop(a, None)
        return {n: env[n] for n in self.boundary}


# --------------------------------------------------------------------------------------------------
# Linear consumers
# --------------------------------------------------------------------------------------------------
_SEPARABLE_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
)
_SEPARABLE_FUNCS = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
}


def _is_flatten_from_1(node: fx.Node, traced: Traced) -> bool:
    if node.op == "call_module":
        m = traced.module(node.target)
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    args = list(node.args[1:])
    start = node.kwargs.get("start_dim", args[0] if args else 0)
    end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    if node.op == "call_function" and node.target is torch.flatten:
        return start == 1 and end == -1
    if node.op == "call_method" and node.target == "flatten":
        return start == 1 and end == -1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = node.args[1:]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return len(shape) == 2 and shape[1] == -1 and not node.kwargs
    return False


def _is_spatial_mean(node: fx.Node) -> bool:
    if not ((node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    )):
        return False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dims is None or "dtype" in node.kwargs:
        return False
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return bool(dims) and all(isinstance(d, int) and d >= 2 for d in dims)


def _separable(node: fx.Node, traced: Traced) -> str | None:
    """'flatten' / 'same' if ``node`` acts on each channel separately and linearly, else None."""
    if _is_flatten_from_1(node, traced):
        return "flatten"
    if node.op == "call_module" and isinstance(traced.module(node.target), _SEPARABLE_MODULES):
        return "same"
    if node.op == "call_function" and node.target in _SEPARABLE_FUNCS:
        return "same"
    if _is_spatial_mean(node):
        return "same"
    return None


@dataclass
class LinearChain:
    """marker -> separable ops -> consumer (``nn.Linear`` or ``nn.ConvNd``, groups 1, zero padding)."""

    marker: fx.Node
    ops: list
    consumer: fx.Node
    kind: str  # "linear" | "conv"
    module: nn.Module
    flattened: bool
    #: units on the last axis of an (N, *positions, C) marker read directly by a Linear (a transformer's
    #: MLP neurons and its down-projection): the rank-1 update is per position
    last_axis: bool = False


def _count_uses(user: fx.Node, node: fx.Node) -> int:
    count = [0]

    def visit(a):
        if a is node:
            count[0] += 1
        return a

    fx.node.map_arg((user.args, user.kwargs), visit)
    return count[0]


def find_linear_chain(marker: fx.Node, traced: Traced) -> LinearChain | None:
    """The linear chain fed by ``marker``, or None (several users, a nonlinear op, grouped conv...)."""
    ops = []
    node = marker
    flattened = False
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        u = users[0]
        if not u.args or u.args[0] is not node or _count_uses(u, node) != 1:
            return None
        if u.op == "call_module":
            mod = traced.module(u.target)
            if isinstance(mod, nn.Linear) and not u.kwargs and len(u.args) == 1:
                return LinearChain(marker, ops, u, "linear", mod, flattened)
            if (
                isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
                and mod.groups == 1
                and mod.padding_mode == "zeros"
                and not flattened
                and len(u.args) == 1
                and not u.kwargs
            ):
                return LinearChain(marker, ops, u, "conv", mod, flattened)
        kind = _separable(u, traced)
        if kind is None or (flattened and kind == "same"):
            return None
        flattened = flattened or kind == "flatten"
        ops.append(u)
        node = u
