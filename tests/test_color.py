"""The batched colour ops against torchvision's per-image functions, and no host sync."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from ssl_zoo.augment.color import (gaussian_blur, grayscale, jitter_factors, jitter_in_order, random_color_jitter,
                                   random_gaussian_blur, random_grayscale)
from tests.host_syncs import HostSyncCounter

TORCHVISION_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def images(batch: int = 24, side: int = 12) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0))


def test_each_image_gets_torchvisions_jitter_in_its_own_order():
    x = images()
    orders = list(itertools.permutations(range(4)))
    order = torch.tensor([orders[i % len(orders)] for i in range(len(x))])
    factors = torch.stack([torch.linspace(0.6, 1.4, len(x)), torch.linspace(1.3, 0.7, len(x)),
                           torch.linspace(0.5, 1.5, len(x)), torch.linspace(-0.1, 0.1, len(x))], dim=1)
    out = jitter_in_order(x, factors, order)
    for i in range(len(x)):
        expected = x[i]
        for op in order[i].tolist():
            expected = TORCHVISION_OPS[op](expected, float(factors[i, op]))
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)  # hue: kornia vs torchvision HSV rounding


def test_grayscale_and_blur_match_torchvision():
    x = images()
    torch.testing.assert_close(grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    sigma = torch.linspace(0.1, 2.0, len(x))
    out = gaussian_blur(x, 5, sigma)
    for i in range(len(x)):
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2), atol=1e-5, rtol=0)


def test_factors_are_drawn_in_torchvisions_ranges():
    f = jitter_factors(20000, (0.4, 0.8, 0.2, 0.1), torch.device("cpu"))
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.2, 1.8), (0.8, 1.2), (-0.1, 0.1)]):
        assert lo <= float(f[:, col].min()) and float(f[:, col].max()) <= hi
        assert float(f[:, col].mean()) == pytest.approx((lo + hi) / 2, abs=0.01)


@pytest.mark.parametrize("op", ["jitter", "gray", "blur"])
def test_the_probability_is_per_image(op):
    torch.manual_seed(0)
    x = images(4000, 8)
    out = {"jitter": lambda: random_color_jitter(x, (0.4, 0.4, 0.2, 0.1), 0.3),
           "gray": lambda: random_grayscale(x, 0.3), "blur": lambda: random_gaussian_blur(x, 3, (0.5, 2.0), 0.3)}[op]()
    changed = (out - x).abs().flatten(1).amax(dim=1) > 1e-6
    assert float(changed.float().mean()) == pytest.approx(0.3, abs=0.03)


def test_no_host_sync():
    x = images()
    with HostSyncCounter() as syncs:
        random_color_jitter(x, (0.4, 0.4, 0.2, 0.1), 0.8)
        random_grayscale(x, 0.2)
        random_gaussian_blur(x, 5, (0.1, 2.0), 0.5)
    assert syncs.total == 0, dict(syncs.calls)
