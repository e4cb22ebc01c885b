"""The train state and the pure train step of the shared loop (gradients, accumulation, NaN guard, EMA trees)."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training.

    ema: the evaluation EMA of the params (`optimizer.ema_decay`), None when off. targets: `{name: params-like
    tree}`, the EMA target networks the task declares (`task.ema_targets()`), `{}` when none.
    """

    step: jax.Array  # int32 [], optimizer steps taken, skipped ones included
    params: Any
    opt_state: Any
    ema: Any
    targets: Any
    skipped: jax.Array  # int32 [], steps whose update was dropped because the loss or a gradient was not finite


def _is_hole(x):
    return x is None


def split_trained(params, mask):
    """(trained, fixed): two trees like `params` holding the leaves where `mask` is True / False, None elsewhere."""
    trained = jax.tree.map(lambda p, m: p if m else None, params, mask)
    fixed = jax.tree.map(lambda p, m: None if m else p, params, mask)
    return trained, fixed


def merge_trained(trained, fixed):
    """Inverse of `split_trained`."""
    return jax.tree.map(lambda t, f: f if t is None else t, trained, fixed, is_leaf=_is_hole)


def ema_update(decay, average, params):
    """`decay * average + (1 - decay) * params`, leaf by leaf."""
    return jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p, average, params)


def make_train_step(task, tx, apply_lr, trained, accumulate_steps, ema_decay, target_decays, param_shardings,
                    micro_sharding):
    """The pure train step `(state, frozen, batch, key) -> (state, metrics)`.

    trained: bool pytree like the params, False for groups at learning rate 0: only the True leaves are
    differentiated, so a frozen group costs no backward pass into its weights and adds nothing to `grad_norm`
    or clipping. The global batch is split into `accumulate_steps` micro-batches whose gradients are averaged
    before one update. The loss sees the step and the target networks: `task.loss(params, frozen, batch, rng,
    step, targets)`. A non-finite loss or gradient norm leaves params, optimizer state, EMA and targets untouched
    and increments `skipped`; otherwise each target `t` becomes `decay * t + (1 - decay) * params`.
    """

    def grads_of(params, frozen, batch, rng, step, targets):
        mine, fixed = split_trained(params, trained)

        def loss_of(mine):
            return task.loss(merge_trained(mine, fixed), frozen, batch, rng, step, targets)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(mine)
        grads = merge_trained(grads, jax.tree.map(jnp.zeros_like, fixed))
        return loss, metrics, jax.lax.with_sharding_constraint(grads, param_shardings)

    def step_fn(state, frozen, batch, key):
        rng = jax.random.fold_in(key, state.step)
        args = (state.step, state.targets)
        if accumulate_steps == 1:
            loss, metrics, grads = grads_of(state.params, frozen, batch, rng, *args)
        else:

            def split(x):
                x = x.reshape(x.shape[0] // accumulate_steps, accumulate_steps, *x.shape[1:])
                return jnp.swapaxes(x, 0, 1)

            micro = jax.tree.map(split, batch)

            def body(carry, i):
                mb = jax.lax.with_sharding_constraint(jax.tree.map(lambda x: x[i], micro), micro_sharding)
                loss, metrics, grads = grads_of(state.params, frozen, mb, jax.random.fold_in(rng, i), *args)
                return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

            zeros = jax.eval_shape(
                lambda: grads_of(state.params, frozen, jax.tree.map(lambda x: x[0], micro), rng, *args)
            )
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            total, _ = jax.lax.scan(body, zeros, jnp.arange(accumulate_steps))
            loss, metrics, grads = jax.tree.map(lambda x: x / accumulate_steps, total)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, apply_lr(updates, state.step))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        ema = state.ema
        if ema is not None:
            ema = keep(ema_update(ema_decay, ema, params), ema)
        targets = {
            name: keep(ema_update(target_decays[name], tree, params), tree) for name, tree in state.targets.items()
        }
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            ema=ema,
            targets=targets,
            skipped=state.skipped + jnp.where(ok, 0, 1).astype(jnp.int32),
        )
        return new_state, {**metrics, "loss": loss, "grad_norm": grad_norm, "skipped": new_state.skipped}

    return step_fn
