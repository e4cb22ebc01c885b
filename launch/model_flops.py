"""Model FLOPs of a step counted analytically from the program's jaxpr, the way MaxText counts them.

Every matrix product (`dot_general`) and convolution counts 2 FLOPs per multiply-accumulate of the *forward*
computation; loop bodies count once per trip (`scan`), rematerialisation and the backward pass are never read from
the program. A product is *trained* when one of its operands depends on a trained parameter: it costs 3× its forward
FLOPs in a train step (forward + two backward products); every other product (frozen sub-models, e.g. a VAE encoding
the input) costs 1×. XLA's own count (`cost_analysis()["flops"]`) is not a model-FLOPs numerator: it includes the
recomputation of remat, counts loop bodies once and cannot see Pallas kernels.
"""

import dataclasses
import math

import jax
from jax.extend import core


@dataclasses.dataclass
class Flops:
    """Forward FLOPs of one call, split by whether the product is trained (×3 in a step) or frozen (×1)."""

    trained: float = 0.0
    frozen: float = 0.0

    def step(self):
        """FLOPs of a train step: trained networks forward + backward (×3), frozen ones forward only."""
        return 3.0 * self.trained + self.frozen

    def forward(self):
        return self.trained + self.frozen


def _dot_flops(eqn):
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs[i] for i in lc)
    batch = math.prod(lhs[i] for i in lb)
    free_l = math.prod(d for i, d in enumerate(lhs) if i not in lc and i not in lb)
    free_r = math.prod(d for i, d in enumerate(rhs) if i not in rc and i not in rb)
    return 2.0 * batch * free_l * free_r * contracted


def _conv_flops(eqn):
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    dn = eqn.params["dimension_numbers"]
    kernel_in = rhs[dn.rhs_spec[1]]
    window = math.prod(rhs[i] for i in dn.rhs_spec[2:])
    # out elements × (input channels per group × window) MACs; input channels of the kernel are per group already.
    # A transposed convolution is a convolution of the input dilated with zeros (lhs_dilation): only one window
    # position in prod(lhs_dilation) meets a real input, the products with the inserted zeros are not model FLOPs.
    dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
    return 2.0 * math.prod(out) * kernel_in * window / dilation


def _sub_jaxprs(eqn):
    """(closed or open jaxpr, trip count) of each sub-program of a higher-order primitive."""
    name = eqn.primitive.name
    if name == "scan":
        return [(eqn.params["jaxpr"], int(eqn.params["length"]))]
    if name == "while":
        raise ValueError(
            "the step contains a while loop whose trip count is unknown before it runs; model FLOPs can only be "
            "counted for programs whose loops are scans (lax.scan / lax.fori_loop with static bounds)"
        )
    if name == "cond":
        return [(max(eqn.params["branches"], key=lambda b: _count(b, None).forward()), 1)]
    return [(v, 1) for k, v in eqn.params.items() if isinstance(v, (core.Jaxpr, core.ClosedJaxpr))]


def _count(jaxpr, trained_in):
    """Flops of `jaxpr`; trained_in: one bool per input (None: all False)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    flags = {}
    for var, flag in zip(jaxpr.invars, trained_in or [False] * len(jaxpr.invars)):
        flags[var] = flag
    is_trained = lambda v: isinstance(v, core.Var) and flags.get(v, False)
    total = Flops()
    for eqn in jaxpr.eqns:
        depends = any(is_trained(v) for v in eqn.invars)
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            flops = _dot_flops(eqn) if name == "dot_general" else _conv_flops(eqn)
            if depends:
                total.trained += flops
            else:
                total.frozen += flops
        else:
            for sub, trips in _sub_jaxprs(eqn):
                n = len(getattr(sub, "jaxpr", sub).invars)
                # operands map onto the sub-program's last inputs (cond's first operand is the branch index)
                ins = [is_trained(v) for v in eqn.invars][len(eqn.invars) - n:] if n else []
                part = _count(sub, [False] * (n - len(ins)) + ins)
                total.trained += trips * part.trained
                total.frozen += trips * part.frozen
        for v in eqn.outvars:
            flags[v] = depends
    return total


def count(fn, trained, *args):
    """Forward `Flops` of `fn(*args)`; `trained`: bools, a tree prefix of `args` (True: a trained input, e.g.
    `(True, False)` for `fn(params, batch)`, or a bool per parameter).

    args may be arrays or `jax.ShapeDtypeStruct`s: nothing is computed, only traced.
    """
    closed = jax.make_jaxpr(fn)(*args)
    per_leaf = jax.tree.map(lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub), tuple(trained), args)
    flat = jax.tree.leaves(per_leaf)
    if len(flat) != len(closed.jaxpr.invars):
        raise ValueError(f"trained flags: {len(flat)} leaves for {len(closed.jaxpr.invars)} inputs of the program")
    return _count(closed, flat)
