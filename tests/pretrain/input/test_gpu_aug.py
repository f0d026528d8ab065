"""The batched aug+ against torchvision: parameter distributions over many draws, and each operation
against torchvision's per-image functional form given the same parameters."""

import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as F

from pretrain.input import gpu_aug

DRAWS = 20000


def ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b]).unique()
    ca = torch.searchsorted(a, grid, right=True).double() / len(a)
    cb = torch.searchsorted(b, grid, right=True).double() / len(b)
    return float((ca - cb).abs().max())


# KS critical value for two samples of DRAWS at alpha = 0.001 is 1.95 * sqrt(2 / DRAWS) = 0.0195.
KS_MAX = 0.0195


@pytest.mark.parametrize("size", [(375, 500), (200, 800), (500, 120), (64, 64)])
def test_crop_boxes_match_torchvision(size):
    H, W = size
    torch.manual_seed(0)
    img = torch.zeros(1, H, W)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, (0.2, 1.0), gpu_aug.RATIO) for _ in range(DRAWS)])
    gen = torch.Generator().manual_seed(1)
    ours = gpu_aug.crop_boxes(torch.full((DRAWS,), H), torch.full((DRAWS,), W), (0.2, 1.0), gen)
    assert ours.shape == (DRAWS, 4) and ours.dtype == torch.long
    i, j, h, w = ours.unbind(1)
    assert (h > 0).all() and (w > 0).all() and (i >= 0).all() and (j >= 0).all()
    assert (i + h <= H).all() and (j + w <= W).all()
    for col, name in enumerate("ijhw"):
        assert ks(ours[:, col], ref[:, col]) < KS_MAX, name
    # The fallback (the whole image clamped to the ratio range, centred) happens as often.
    fallback = ref.mode(0).values
    ref_rate = (ref == fallback).all(1).double().mean()
    our_rate = (ours == fallback).all(1).double().mean()
    assert abs(ref_rate - our_rate) < 0.015, (ref_rate, our_rate)
    if size == (200, 800):
        assert 0.2 < ref_rate < 0.6  # this size does exercise the fallback


def test_crop_boxes_always_fall_back_for_extreme_aspect():
    gen = torch.Generator().manual_seed(0)
    box = gpu_aug.crop_boxes(torch.full((100,), 100), torch.full((100,), 1000), (0.2, 1.0), gen)
    ref = T.RandomResizedCrop.get_params(torch.zeros(1, 100, 1000), (0.2, 1.0), gpu_aug.RATIO)
    assert (box == torch.tensor(ref)).all()  # (0, 433, 100, 133): centred, ratio clamped to 4/3


def test_color_blur_flip_params_match_torchvision():
    torch.manual_seed(0)
    jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    ref = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
           for _ in range(DRAWS)]
    ref_factors = torch.tensor([r[1:] for r in ref])
    ref_order = torch.stack([r[0] for r in ref])
    ref_sigma = torch.tensor([T.GaussianBlur.get_params(0.1, 2.0) for _ in range(DRAWS)])
    gen = torch.Generator().manual_seed(1)
    p = gpu_aug.sample_params(torch.full((DRAWS,), 32), torch.full((DRAWS,), 32), gen)
    for col, name in enumerate(["brightness", "contrast", "saturation", "hue"]):
        assert ks(p.factors[:, col], ref_factors[:, col]) < KS_MAX, name
    assert ks(p.sigma, ref_sigma) < KS_MAX
    # Every one of the 24 orders about equally often, as torch.randperm(4) gives them.
    def freq(orders):
        codes = (orders * torch.tensor([64, 16, 4, 1])).sum(1)
        return torch.bincount(codes, minlength=256)[codes.unique()].double() / len(orders)
    assert len(freq(p.order)) == len(freq(ref_order)) == 24
    assert (freq(p.order) - 1 / 24).abs().max() < 0.006
    # RandomApply / RandomGrayscale / RandomHorizontalFlip probabilities (sd ~0.003 at 20000 draws).
    for flags, prob in [(p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.5), (p.flip, 0.5)]:
        assert abs(flags.double().mean() - prob) < 0.015
    # Flags are drawn independently of each other.
    both = (p.gray & p.flip).double().mean()
    assert abs(both - 0.1) < 0.01
    assert not gpu_aug.sample_params(torch.full((100,), 32), torch.full((100,), 32), gen, blur=False).blur.any()


def smooth_image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, h // 16), max(2, w // 16), generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
    return (img.clamp(0, 1)[0] * 255).round().to(torch.uint8)


def test_resized_crop_of_output_size_is_an_exact_copy():
    imgs = [smooth_image(40, 50, 0), smooth_image(33, 31, 1), smooth_image(100, 20, 2)]
    box = torch.tensor([[3, 5, 16, 16], [0, 0, 16, 16], [84, 4, 16, 16], [10, 2, 16, 16]])
    image_of = torch.tensor([0, 1, 2, 2])
    out = gpu_aug.resized_crops(imgs, image_of, box, 16)
    for v in range(4):
        i, j, h, w = box[v].tolist()
        ref = imgs[image_of[v]][:, i : i + h, j : j + w].float() / 255
        assert torch.allclose(out[v], ref, atol=1e-6)


def test_resized_crop_shrinking_by_an_integer_factor_is_area_averaging():
    img = smooth_image(375, 500, 0)
    box = torch.tensor([[0, 0, 320, 320], [10, 20, 128, 128], [7, 3, 192, 192]])
    out = gpu_aug.resized_crops([img], torch.zeros(3, dtype=torch.long), box, 64)
    for v, (i, j, h, w) in enumerate(box.tolist()):
        crop = img[None, :, i : i + h, j : j + w].float() / 255
        ref = torch.nn.functional.interpolate(crop, size=(64, 64), mode="area")[0]
        assert torch.allclose(out[v], ref, atol=1e-5)


def test_resized_crop_close_to_torchvision_antialiased():
    """The same boxes through F.resized_crop(antialias=True): roi_align's box averaging differs
    from the anti-aliased bilinear filter only slightly, and is nearer to it than plain bilinear,
    including at the borders of images padded into a shared canvas."""
    imgs = [smooth_image(375, 500, 0), smooth_image(333, 500, 1), smooth_image(500, 375, 2), smooth_image(120, 90, 3)]
    gen = torch.Generator().manual_seed(0)
    image_of = torch.arange(4).repeat(4)
    hs = torch.tensor([im.shape[1] for im in imgs])[image_of]
    ws = torch.tensor([im.shape[2] for im in imgs])[image_of]
    box = gpu_aug.crop_boxes(hs, ws, (0.2, 1.0), gen)
    out = gpu_aug.resized_crops(imgs, image_of, box, 64)
    ours_total = plain_total = 0.0
    for v in range(len(box)):
        i, j, h, w = box[v].tolist()
        img = imgs[image_of[v]].float() / 255
        ref = F.resized_crop(img, i, j, h, w, [64, 64], antialias=True)
        plain = F.resized_crop(img, i, j, h, w, [64, 64], antialias=False)
        err = (out[v] - ref).abs()
        assert err.mean() < 0.01 and err.max() < 0.08, (v, err.mean(), err.max())
        ours_total += float(err.mean())
        plain_total += float((plain - ref).abs().mean())
    assert ours_total < plain_total


def test_color_blur_flip_equal_torchvision_per_image():
    V, S = 24, 32
    gen = torch.Generator().manual_seed(3)
    p = gpu_aug.sample_params(torch.full((V,), S), torch.full((V,), S), gen)
    p.jitter[:20] = True  # make sure most views exercise the jitter
    x = torch.stack([smooth_image(S, S, v).float() / 255 for v in range(V)])
    ours = gpu_aug.color_blur_flip(x.clone(), p, S)
    k = gpu_aug.blur_kernel(S)
    fns = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    for v in range(V):
        ref = x[v]
        if p.jitter[v]:
            for op in p.order[v].tolist():
                ref = fns[op](ref, float(p.factors[v, op]))
        if p.gray[v]:
            ref = F.rgb_to_grayscale(ref, 3)
        if p.blur[v]:
            ref = F.gaussian_blur(ref, [k, k], [float(p.sigma[v])] * 2)
        if p.flip[v]:
            ref = F.horizontal_flip(ref)
        assert torch.allclose(ours[v], ref, atol=5e-4), (v, (ours[v] - ref).abs().max())


def test_order_of_jitter_matters_and_is_followed():
    """Contrast then brightness differs from brightness then contrast: the order is not ignored."""
    x = torch.stack([smooth_image(16, 16, 0).float() / 255] * 2)
    p = gpu_aug.sample_params(torch.full((2,), 16), torch.full((2,), 16), torch.Generator().manual_seed(0))
    p.jitter[:] = True
    p.gray[:] = p.blur[:] = p.flip[:] = False
    p.factors[:] = torch.tensor([1.4, 0.6, 1.0, 0.0])
    p.order[0] = torch.tensor([0, 1, 2, 3])
    p.order[1] = torch.tensor([1, 0, 2, 3])
    out = gpu_aug.color_blur_flip(x.clone(), p, 16)
    assert not torch.allclose(out[0], out[1], atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_views_shapes_dtypes_ranges_and_determinism(dtype):
    imgs = [smooth_image(60 + 7 * k, 80 - 5 * k, k) for k in range(6)]
    q, k = gpu_aug.two_views(imgs, torch.Generator().manual_seed(5), 32, dtype=dtype)
    assert q.shape == k.shape == (6, 3, 32, 32)
    assert q.dtype == k.dtype == dtype
    assert q.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(gpu_aug.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(gpu_aug.IMAGENET_STD).view(1, 3, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    tol = 0.02 if dtype == torch.bfloat16 else 1e-5
    for v in (q, k):
        assert (v.float() >= lo - tol).all() and (v.float() <= hi + tol).all()
    assert not torch.equal(q, k)
    q2, k2 = gpu_aug.two_views(imgs, torch.Generator().manual_seed(5), 32, dtype=dtype)
    assert torch.equal(q, q2) and torch.equal(k, k2)
    q3, _ = gpu_aug.two_views(imgs, torch.Generator().manual_seed(6), 32, dtype=dtype)
    assert not torch.equal(q, q3)


def test_pack_groups_covers_each_image_once_within_slack():
    hs = [375, 333, 500, 375, 3000, 375, 64, 500]
    ws = [500, 500, 375, 500, 4000, 500, 64, 333]
    groups = gpu_aug.pack_groups(hs, ws)
    assert sorted(k for g in groups for k in g) == list(range(len(hs)))
    assert [4] in groups  # the huge photo does not inflate anyone's canvas
    for g in groups:
        canvas = max(hs[k] for k in g) * max(ws[k] for k in g) * len(g)
        assert canvas <= 1.5 * sum(hs[k] * ws[k] for k in g) or len(g) == 1


def test_blur_kernel_matches_cpu_pipeline():
    from pretrain.input import data

    for size in (32, 64, 224):
        t = [s for s in data.aug_plus(size).transforms if isinstance(s, T.RandomApply)][-1].transforms[0]
        assert list(t.kernel_size) == [gpu_aug.blur_kernel(size)] * 2
    assert math.isclose(gpu_aug.SIGMA[1], 2.0)
