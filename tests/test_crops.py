"""RandomResizedCrop on whole images (padded canvases with valid sizes), antialiased shrinking, batched
multi-crop, and no host syncs in the crop path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2.functional import resized_crop

from ssl_zoo.augment import MultiViewAugment, ViewAugment, ViewSpec, crop_resize, sample_boxes

PLAIN = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0, flip_p=0.0, interpolation="bilinear")
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def ks_pvalue(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov test, asymptotic p-value (scipy is not a dependency)."""
    a, b = a.double().sort().values, b.double().sort().values
    values = torch.cat([a, b])
    d = (torch.searchsorted(a, values, right=True) / len(a) - torch.searchsorted(b, values, right=True) / len(b))
    d = float(d.abs().max())
    n = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    return min(1.0, max(0.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))))


def box_stats(boxes: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
    """Area fraction, log aspect (w / h) and centre (fractions) of (N, 4) boxes normalised by the image, from
    whole pixels (float32 rounding would split the ties of these discrete distributions)."""
    x1, y1, x2, y2 = (boxes.double() * torch.tensor([width, height] * 2)).round().unbind(1)
    return {"area": (x2 - x1) * (y2 - y1) / (width * height), "log_aspect": torch.log((x2 - x1) / (y2 - y1)),
            "centre_x": (x1 + x2) / (2 * width), "centre_y": (y1 + y2) / (2 * height)}


def torchvision_boxes(n: int, height: int, width: int) -> torch.Tensor:
    torch.manual_seed(11)
    image = torch.empty(1, height, width)
    rows = [RandomResizedCrop.get_params(image, list(SCALE), list(RATIO)) for _ in range(n)]  # (top, left, h, w)
    top, left, h, w = torch.tensor(rows, dtype=torch.float64).unbind(1)
    return torch.stack([left / width, top / height, (left + w) / width, (top + h) / height], 1)


def canvases(n: int, height: int, width: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, 1, side, side), torch.tensor([[height, width]]).expand(n, 2)


@pytest.mark.parametrize("height,width", [(30, 40), (48, 27)])
def test_whole_image_boxes_follow_torchvisions_random_resized_crop(height, width):
    n, side = 3000, 48
    torch.manual_seed(5)
    images, sizes = canvases(n, height, width, side)
    _, boxes, _ = ViewAugment(ViewSpec(size=8, scale=SCALE, ratio=RATIO, **PLAIN))(images, sizes)
    ours, reference = box_stats(boxes, height, width), box_stats(torchvision_boxes(n, height, width), height, width)
    for key in ours:
        assert ks_pvalue(ours[key], reference[key]) > 1e-3, key
    # the old loader's centre square of the image, mapped back into the whole image, is told apart
    short = min(height, width)
    _, square, _ = ViewAugment(ViewSpec(size=8, scale=SCALE, ratio=RATIO, **PLAIN))(images, sizes.clamp(max=short))
    scale = torch.tensor([short / width, short / height] * 2)
    shift = torch.tensor([(width - short) // 2 / width, (height - short) // 2 / height] * 2)
    wrong = box_stats(square * scale + shift, height, width)
    long_axis = "centre_x" if width > height else "centre_y"
    assert ks_pvalue(wrong["area"], reference["area"]) < 1e-6
    assert ks_pvalue(wrong[long_axis], reference[long_axis]) < 1e-6


def view_centres(x1: torch.Tensor, x2: torch.Tensor, size: int) -> torch.Tensor:
    """Where the pixel centres of a view cut from edges x1..x2 (B,) lie: (B, size) edge coordinates
    x1 + (i + 0.5) (x2 - x1) / size (torchvision's resized_crop)."""
    return x1[:, None] + (torch.arange(size) + 0.5) * (x2 - x1)[:, None] / size


def test_a_ramps_view_holds_what_its_recorded_box_predicts_at_every_pixel_centre():
    """Each canvas pixel p holds its centre's coordinate p + 0.5 (a ramp, which bilinear sampling reproduces
    exactly): every view pixel shows where the recorded box, mapped back into the canvas, puts its centre.
    Samples beyond the outermost centres read the border pixel."""
    torch.manual_seed(6)
    side, n = 40, 64
    xs = (torch.arange(side).float() + 0.5).view(1, 1, 1, side).expand(n, 1, side, side)
    ys = (torch.arange(side).float() + 0.5).view(1, 1, side, 1).expand(n, 1, side, side)
    images = torch.cat([xs, ys, torch.zeros_like(xs)], 1) / side
    sizes = torch.stack([torch.randint(20, side + 1, (n,)), torch.randint(20, side + 1, (n,))], 1)
    view, boxes, _ = ViewAugment(ViewSpec(size=side, scale=(0.1, 0.9), **PLAIN))(images, sizes)  # enlarged: no blur
    height, width = sizes.unbind(1)
    top, left = (side - height) // 2, (side - width) // 2
    x1, y1, x2, y2 = boxes.unbind(1)
    assert boxes.min() >= 0 and boxes.max() <= 1
    cx = view_centres(left + x1 * width, left + x2 * width, side).clamp(0.5, side - 0.5)
    cy = view_centres(top + y1 * height, top + y2 * height, side).clamp(0.5, side - 0.5)
    assert torch.allclose(view[:, 0] * side, cx[:, None, :].expand(-1, side, -1), atol=1e-3)
    assert torch.allclose(view[:, 1] * side, cy[:, :, None].expand(-1, -1, side), atol=1e-3)
    # the mapping it replaced (first and last pixel centres of the box onto the view's) is told apart
    first, span = left + x1 * width + 0.5, (x2 - x1) * width - 1
    old = first[:, None] + torch.arange(side) * span[:, None] / (side - 1)
    assert (view[:, 0, 0] * side - old).abs().amax() > 0.2


def stripes(period: int, side: int = 96) -> torch.Tensor:
    x = torch.arange(side).float()
    return (0.5 + 0.5 * torch.cos(2 * math.pi * x / period)).view(1, 1, 1, side).expand(2, 1, side, side)


def test_shrinking_a_fine_pattern_does_not_alias():
    side, out = 96, 24
    whole = torch.tensor([[0.0, 0, side, side]] * 2)
    for mode in ("bilinear", "bicubic"):
        fine = crop_resize(stripes(2), whole, out, mode)  # at the source's Nyquist: must average out to grey
        assert (fine - 0.5).abs().max() < 0.02, mode
        coarse = crop_resize(stripes(32), whole, out, mode)  # 8 output pixels per period: must survive
        assert coarse.amax() - coarse.amin() > 0.8, mode
    # the point sampling it replaced shows the fine pattern as a full-contrast false one
    aliased = F.interpolate(stripes(2.5), size=(out, out), mode="bilinear", align_corners=True)
    assert aliased.amax() - aliased.amin() > 0.5
    assert (crop_resize(stripes(2.5), whole, out, "bilinear") - 0.5).abs().max() < 0.05


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_enlarged_crops_are_torchvisions_resized_crop(mode):
    """Away from the border a view is torchvision's resized_crop of its box, without blur (at the border
    crop_resize reads the image beyond the box, torchvision repeats the box's edge pixel)."""
    torch.manual_seed(7)
    images = torch.rand(3, 3, 20, 24)
    boxes = torch.tensor([[2.0, 3, 10, 11], [0, 0, 9, 8], [15, 12, 24, 20]])  # 8-9 pixels -> 24
    views = crop_resize(images, boxes, 24, mode)
    inner = (slice(None), slice(4, -4), slice(4, -4))
    for view, image, (x1, y1, x2, y2) in zip(views, images, boxes.int().tolist()):
        expected = resized_crop(image, y1, x1, y2 - y1, x2 - x1, [24, 24], InterpolationMode(mode), antialias=False)
        assert torch.allclose(view[inner], expected[inner], atol=1e-5)
        # the first-to-last pixel centre mapping it replaced is far off
        centres = F.interpolate(image[None, :, y1:y2, x1:x2], size=(24, 24), mode=mode, align_corners=True)[0]
        assert (centres[inner] - expected[inner]).abs().max() > 0.1


def test_local_crops_of_one_recipe_are_made_in_one_call():
    torch.manual_seed(8)
    glob, local = ViewSpec(size=24, blur_p=1.0), ViewSpec(size=12, scale=(0.05, 0.4), solarize_p=0.2)
    aug = MultiViewAugment([glob, ViewSpec(size=24, solarize_p=0.2), *[local] * 6])
    calls = []
    for module in aug.views:
        module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    images = torch.randint(0, 256, (5, 3, 32, 40), dtype=torch.uint8)
    sizes = torch.tensor([[32, 40], [30, 40], [32, 24], [32, 32], [20, 40]])
    views = aug(images, sizes)
    assert calls == [5, 5, 30]  # three calls: two global recipes, then all six local crops at once
    assert [tuple(c.shape) for c in views.crops] == [(5, 3, 24, 24)] * 2 + [(5, 3, 12, 12)] * 6
    locals_ = torch.stack(views.boxes[2:])  # independent crops: no two local views share boxes
    assert all(not torch.equal(locals_[i], locals_[j]) for i in range(6) for j in range(i))
    assert all(b.shape == (5, 4) and f.shape == (5,) for b, f in zip(views.boxes, views.flips))


class SyncCounter(TorchFunctionMode):
    """Calls that make the host wait for the device (or copy host data to it) on CUDA."""

    NAMES = {"item", "__bool__", "tolist", "nonzero", "masked_select", "tensor", "as_tensor", "__int__", "__float__"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        boolean_index = name == "__getitem__" and any(isinstance(a, torch.Tensor) and a.dtype == torch.bool
                                                      for a in (args[1] if isinstance(args[1], tuple) else (args[1],)))
        if name in self.NAMES or boolean_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_whole_image_crops_and_multi_crop_make_no_host_sync():
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    sizes = torch.tensor([[30, 40], [40, 30], [40, 40], [30, 30]])
    aug = MultiViewAugment([ViewSpec(size=24, **PLAIN), *[ViewSpec(size=12, scale=(0.05, 0.4), **PLAIN)] * 4])
    with SyncCounter() as counter:
        aug(images, sizes)
        aug(images)
        sample_boxes(sizes.float(), SCALE, RATIO)
    assert counter.calls == []
    with SyncCounter() as live:  # the counter does see the calls it looks for
        _ = images[sizes[:, 0] > 30]
    assert live.calls == ["__getitem__"]
