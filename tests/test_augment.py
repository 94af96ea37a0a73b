import torch

from ssl_zoo.augment import MultiViewAugment, ViewAugment, ViewSpec, odd_kernel, sample_boxes

PLAIN = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0, interpolation="bilinear")


def coordinate_images(batch=16, size=32):
    """Channel 0 encodes x, channel 1 encodes y (pixel p holds its centre p + 0.5, over size): a crop's
    content reveals where it came from."""
    xs = (torch.arange(size).float() + 0.5).view(1, 1, 1, size).expand(batch, 1, size, size)
    ys = (torch.arange(size).float() + 0.5).view(1, 1, size, 1).expand(batch, 1, size, size)
    return torch.cat([xs, ys, torch.zeros_like(xs)], 1) / size


def first_and_last_centres(a: torch.Tensor, b: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a view's first and last pixel centres lie when it is cut from edges a..b (B,) of an image `size`
    wide: a + 0.5 (b - a) / size and b - 0.5 (b - a) / size, no further out than the image's outer centres."""
    half = 0.5 * (b - a) / size
    return (a + half).clamp(0.5, size - 0.5), (b - half).clamp(0.5, size - 0.5)


def test_shapes_ranges_and_dtypes():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    aug = MultiViewAugment([ViewSpec(size=24, blur_p=1.0, solarize_p=0.5), ViewSpec(size=12)], normalize="none")
    views = aug(images)
    assert [tuple(c.shape) for c in views.crops] == [(8, 3, 24, 24), (8, 3, 12, 12)]
    for crop in views.crops:
        assert crop.dtype == torch.float32 and crop.min() >= 0 and crop.max() <= 1
    for box in views.boxes:
        assert box.shape == (8, 4) and box.min() >= 0 and box.max() <= 1


def test_imagenet_normalisation_applied():
    images = torch.full((4, 3, 16, 16), 255, dtype=torch.uint8)
    aug = ViewAugment(ViewSpec(size=16, flip_p=0.0, **PLAIN), normalize="imagenet")
    view, _, _ = aug(images)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(view[0, :, 0, 0], expected, atol=1e-5)


def test_boxes_match_the_crop_content():
    torch.manual_seed(1)
    size = 32
    images = coordinate_images(64, size)
    aug = ViewAugment(ViewSpec(size=size, scale=(0.2, 0.9), flip_p=0.0, **PLAIN))  # enlarged: no antialias blur
    view, boxes, flips = aug(images)
    assert not flips.any()
    x1, y1, x2, y2 = (boxes * size).unbind(1)
    # the first / last pixels of the crop carry the original coordinates of their centres
    left, right = first_and_last_centres(x1, x2, size)
    top, bottom = first_and_last_centres(y1, y2, size)
    assert torch.allclose(view[:, 0, 0, 0] * size, left, atol=1e-3)
    assert torch.allclose(view[:, 0, 0, -1] * size, right, atol=1e-3)
    assert torch.allclose(view[:, 1, 0, 0] * size, top, atol=1e-3)
    assert torch.allclose(view[:, 1, -1, 0] * size, bottom, atol=1e-3)


def test_flip_recorded_and_box_x_swapped():
    torch.manual_seed(2)
    size = 32
    images = coordinate_images(64, size)
    aug = ViewAugment(ViewSpec(size=size, scale=(0.2, 0.9), flip_p=0.5, **PLAIN))
    view, boxes, flips = aug(images)
    assert 0 < flips.sum() < 64
    # flipped views run right-to-left, and their box has x1 > x2
    left, right = view[:, 0, 0, 0], view[:, 0, 0, -1]
    assert torch.equal(flips, left > right)
    assert torch.equal(flips, boxes[:, 0] > boxes[:, 2])
    x_start, x_end = (torch.where(flips[:, None], boxes[:, [2, 0]], boxes[:, [0, 2]]) * size).unbind(1)
    first, _ = first_and_last_centres(x_start, x_end, size)
    assert torch.allclose(torch.minimum(left, right) * size, first, atol=1e-3)


def test_random_resized_crop_area_and_ratio_within_range():
    torch.manual_seed(3)
    boxes = sample_boxes(torch.full((2000, 2), 100.0), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / 10000
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert ((w / h) > 0.7).all() and ((w / h) < 1.4).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 100).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 100).all()


def test_solarize_and_blur_probabilities_one_change_pixels():
    torch.manual_seed(4)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    plain = ViewAugment(ViewSpec(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, **PLAIN))
    sol = ViewAugment(ViewSpec(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0,
                               **{**PLAIN, "solarize_p": 1.0}))
    a, _, _ = plain(images)
    b, _, _ = sol(images)
    assert torch.allclose(b, torch.where(a >= 0.5, 1 - a, a))
    assert odd_kernel(224, 0.1) == 23 and odd_kernel(28, 0.1) == 3


def test_grayscale_input_keeps_one_channel():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    view, _, _ = ViewAugment(ViewSpec(size=20, blur_p=1.0))(images)
    assert view.shape == (4, 1, 20, 20)
