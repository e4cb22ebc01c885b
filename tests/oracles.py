"""PyTorch originals used as test oracles, built with random weights."""

import contextlib
import sys
import types


@contextlib.contextmanager
def _torchvision_compose_stand_in():
    """Expose a minimal `torchvision.transforms.Compose` only while importing the official code.

    The official package imports torchvision for `Compose` alone; the PyPI torchvision wheel does not work with
    the CPU torch here, and `transformers` treats any importable `torchvision` as the real one, so the stand-in
    is removed again right after the import.
    """
    if "torchvision" in sys.modules:
        yield
        return

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, sample):
            for t in self.transforms:
                sample = t(sample)
            return sample

    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.Compose = Compose
    torchvision.transforms = transforms
    sys.modules["torchvision"] = torchvision
    sys.modules["torchvision.transforms"] = transforms
    try:
        yield
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.transforms"]


def official_dav2():
    """The official `depth_anything_v2.dpt` module (PyPI `jkp-depth-anything-v2`)."""
    with _torchvision_compose_stand_in():
        from depth_anything_v2 import dpt
    return dpt


OFFICIAL_CONFIGS = {
    "vits": dict(encoder="vits", features=64, out_channels=[48, 96, 192, 384]),
    "vitb": dict(encoder="vitb", features=128, out_channels=[96, 192, 384, 768]),
    "vitl": dict(encoder="vitl", features=256, out_channels=[256, 512, 1024, 1024]),
    "vitg": dict(encoder="vitg", features=384, out_channels=[1536, 1536, 1536, 1536]),
}


def official_model(encoder, max_depth=None, seed=0):
    """An official DepthAnythingV2 with random weights; metric mode when `max_depth` is given.

    The metric model is upstream `metric_depth/depth_anything_v2/dpt.py`, which differs from the relative one only
    in the last activation (Sigmoid instead of ReLU) and the output scale (x max_depth, no final ReLU); it is
    reproduced here by swapping that activation on the official class.
    """
    import torch

    dpt = official_dav2()
    torch.manual_seed(seed)
    model = dpt.DepthAnythingV2(**OFFICIAL_CONFIGS[encoder])
    _randomise_(model, seed)
    _centre_head_(model)
    if max_depth is not None:
        model.depth_head.scratch.output_conv2[3] = torch.nn.Sigmoid()
        head = model.depth_head

        def forward(x):
            ph, pw = x.shape[-2] // 14, x.shape[-1] // 14
            feats = model.pretrained.get_intermediate_layers(
                x, model.intermediate_layer_idx[model.encoder], return_class_token=True
            )
            return (head(feats, ph, pw) * max_depth).squeeze(1)

        model.forward = forward
    return model.eval()


def _randomise_(model, seed):
    """Give every parameter a non-trivial random value (LayerScale is 1.0 and biases 0 at init otherwise)."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith("gamma"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))


def _centre_head_(model):
    """Shift the last conv's bias so that about half the pre-activation outputs are positive.

    With random weights the final ReLU can otherwise zero the whole map (it does for ViT-G), and a parity test on
    a constant output checks nothing.
    """
    import torch

    last = model.depth_head.scratch.output_conv2[2]
    activation = model.depth_head.scratch.output_conv2[3]
    model.depth_head.scratch.output_conv2[3] = torch.nn.Identity()
    x = torch.randn(1, 3, 70, 70, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pre = model.depth_head(
            model.pretrained.get_intermediate_layers(x, model.intermediate_layer_idx[model.encoder], return_class_token=True),
            5, 5)
        last.bias -= pre.median()
    model.depth_head.scratch.output_conv2[3] = activation
