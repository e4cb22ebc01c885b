"""Optax optimizers with per-group learning rates and the learning-rate schedules of the training loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def schedule(sched, total_steps):
    """Learning-rate multiplier in [0, 1] as a function of the step: linear warm-up, then the chosen decay.

    sched.kind: "constant" | "poly" ((1 - t/T)^power) | "cosine" (down to `end_factor`) | "exponential"
    (`decay_rate` per `decay_steps`); t counts from the end of warm-up, T = total_steps - warmup_steps.
    "iter_exponential" is Marigold's released schedule instead: n / warmup_steps for step n < warmup_steps (so the
    first update has lr 0), then final_ratio ** ((n - warmup_steps) / (decay_end - warmup_steps)) until
    `decay_end` (0: total_steps) and final_ratio after it.
    """
    warmup = int(sched.warmup_steps)
    if sched.kind == "iter_exponential":
        return _iter_exponential(warmup, int(sched.get("decay_end", 0)) or total_steps, float(sched.final_ratio))
    decay_steps = max(total_steps - warmup, 1)
    kinds = {
        "constant": lambda t: jnp.ones_like(t),
        "poly": lambda t: (1.0 - jnp.minimum(t / decay_steps, 1.0)) ** sched.power,
        "cosine": lambda t: sched.end_factor
        + (1.0 - sched.end_factor) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t / decay_steps, 1.0))),
        "exponential": lambda t: sched.decay_rate ** (t / sched.decay_steps),
    }
    if sched.kind not in kinds:
        raise ValueError(
            f"config.schedule.kind must be one of {sorted(kinds) + ['iter_exponential']}, got {sched.kind!r}"
        )
    decay = kinds[sched.kind]

    def factor(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum((step + 1.0) / warmup, 1.0) if warmup > 0 else 1.0
        return warm * decay(jnp.maximum(step - warmup, 0.0))

    return factor


def _iter_exponential(warmup, decay_end, final_ratio):
    if not 0.0 < final_ratio <= 1.0 or decay_end <= warmup:
        raise ValueError(
            f"iter_exponential needs 0 < final_ratio <= 1 and decay_end > warmup_steps; got final_ratio="
            f"{final_ratio}, decay_end={decay_end}, warmup_steps={warmup}"
        )
    log_final = float(np.log(final_ratio))

    def factor(step):
        n = jnp.asarray(step, jnp.float32)
        t = jnp.clip((n - warmup) / (decay_end - warmup), 0.0, 1.0)
        decayed = jnp.exp(t * log_final)
        return jnp.where(n < warmup, n / max(warmup, 1), decayed) if warmup > 0 else decayed

    return factor


def make_optimizer(opt, sched, total_steps, labels):
    """Optax transformation with one learning rate per parameter group.

    opt.lr maps each label of `labels` to its peak learning rate (0 freezes the group: no optimizer state).
    Weight decay (decoupled, AdamW-style) applies to tensors of rank >= 2 only, not to biases, norms or scales.
    The learning rate is a function of the loop's step (so a skipped step does not shift the schedule): the
    returned `tx` gives descent directions, and `apply_lr(updates, step)` scales them per group.
    Returns (tx, apply_lr, lr_fns) with lr_fns[label](step) the learning rate used for the update at `step`.
    """
    found = sorted(set(jax.tree.leaves(labels)))
    missing = [label for label in found if label not in opt.lr]
    if missing:
        raise ValueError(
            f"parameter groups {missing} have no learning rate; add --config.optimizer.lr.NAME=VALUE "
            f"(configured: {sorted(opt.lr)})"
        )
    factor = schedule(sched, total_steps)
    groups, lr_fns = {}, {}
    for label in found:
        peak = float(opt.lr[label])
        lr_fns[label] = lambda step, peak=peak: peak * factor(step)
        if peak == 0.0:
            groups[label] = optax.set_to_zero()
            continue
        if opt.name == "adamw":
            direction = optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)
        elif opt.name == "sgd":
            direction = optax.trace(decay=opt.b1) if opt.b1 else optax.identity()
        else:
            raise ValueError(f"config.optimizer.name must be 'adamw' or 'sgd', got {opt.name!r}")
        groups[label] = optax.chain(
            direction,
            optax.add_decayed_weights(opt.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
        )
    tx = optax.multi_transform(groups, labels)
    if opt.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), tx)

    def apply_lr(updates, step):
        return jax.tree.map(lambda u, label: -lr_fns[label](step) * u, updates, labels)

    return tx, apply_lr, lr_fns


def trained_mask(opt, labels):
    """Bool pytree like `labels`: True where the parameter's group has a non-zero peak learning rate.

    The train step differentiates only these: a group at lr 0 costs no gradient and adds nothing to the norm.
    """
    return jax.tree.map(lambda label: float(opt.lr[label]) != 0.0, labels)
