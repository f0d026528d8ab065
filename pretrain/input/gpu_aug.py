"""aug+ on whole batches on the GPU, with per-sample random parameters.

The parameters are drawn on the CPU from one ``torch.Generator`` per batch, from exactly the
distributions torchvision's transforms draw from (``sample_params``), so the device path never
waits on the host and a seed fixes every view. The operations then run on the device:

- RandomResizedCrop: ``torchvision.ops.roi_align`` crops and resizes every view of every image in
  one kernel per group of similar-sized images. With ``aligned=True`` and an adaptive sampling
  ratio it samples pixel centres exactly (a crop of the output size is copied unchanged) and
  averages ceil(crop/size)^2 bilinear samples per output pixel when shrinking, which is the
  anti-aliasing that PIL's resize gives the reference pipeline. kornia's and torchvision.v2's
  crops take one common size for a batch of equal-sized images, and the decoded JPEGs differ in
  size, hence roi_align over padded groups.
- ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 in a per-sample random order of its four
  operations: ``kornia.enhance``'s brightness, contrast, saturation and hue functions, which take
  one factor per sample and agree with torchvision's tensor functions to 1e-4. kornia's own
  ``ColorJitter`` shuffles the order once per batch, torchvision once per image, hence the
  per-position dispatch below.
- RandomGrayscale(p=0.2), GaussianBlur (sigma in [0.1, 2], p=0.5, kernel 10% of the side,
  reflect padding: ``kornia.filters.gaussian_blur2d`` with one sigma per sample), horizontal
  flip, ImageNet mean/std; output fp32 or bf16, channels_last where the model is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.filters import gaussian_blur2d
from torchvision.ops import roi_align

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
P_JITTER, P_GRAY, P_BLUR, P_FLIP = 0.8, 0.2, 0.5, 0.5
SIGMA = (0.1, 2.0)
ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback


def blur_kernel(image_size: int) -> int:
    """The blur kernel of ``pretrain.data.aug_plus``: 10% of the side, odd, at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


@dataclass
class AugParams:
    """Per-view parameters of one batch; V views, all CPU tensors.

    ``box`` [V, 4] (top i, left j, height h, width w) in pixels; ``jitter`` [V] bool;
    ``factors`` [V, 4] (brightness, contrast, saturation, hue); ``order`` [V, 4] a permutation of
    0..3 per view; ``gray``, ``blur``, ``flip`` [V] bool; ``sigma`` [V].
    """

    box: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    flip: torch.Tensor


def crop_boxes(heights: torch.Tensor, widths: torch.Tensor, scale: tuple[float, float], gen: torch.Generator,
               ratio: tuple[float, float] = RATIO) -> torch.Tensor:
    """RandomResizedCrop.get_params for many images at once: [V, 4] (i, j, h, w).

    Each of ``ATTEMPTS`` tries draws an area fraction from U(scale) and a log aspect ratio from
    U(log ratio); the first box that fits is placed uniformly. If none fits, the fallback is
    torchvision's: the whole image clamped to the ratio range, centred.
    """
    H, W = heights.double(), widths.double()
    V = H.shape[0]
    area = (H * W)[:, None]
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(V, ATTEMPTS, generator=gen, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(V, ATTEMPTS, generator=gen, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= W[:, None]) & (h <= H[:, None])
    first = fits.double().argmax(1)  # index of the first fitting try (0 if none)
    ok = fits.any(1)
    h = h.gather(1, first[:, None])[:, 0]
    w = w.gather(1, first[:, None])[:, 0]
    u = torch.rand(V, 2, generator=gen, dtype=torch.float64)
    i = torch.floor(u[:, 0] * (H - h + 1))
    j = torch.floor(u[:, 1] * (W - w + 1))

    in_ratio = W / H
    fw = torch.where(in_ratio < ratio[0], W, torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W))
    fh = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    fi, fj = torch.div(H - fh, 2, rounding_mode="floor"), torch.div(W - fw, 2, rounding_mode="floor")
    box = torch.stack([torch.where(ok, i, fi), torch.where(ok, j, fj), torch.where(ok, h, fh), torch.where(ok, w, fw)], 1)
    return box.long()


def sample_params(heights: torch.Tensor, widths: torch.Tensor, gen: torch.Generator,
                  min_scale: float = 0.2, blur: bool = True) -> AugParams:
    """Draw aug+ parameters for V views of images of the given sizes ([V] ints each)."""
    V = heights.shape[0]
    box = crop_boxes(heights, widths, (min_scale, 1.0), gen)
    u = torch.rand(V, 4, generator=gen)
    b, c, s, h = JITTER
    lo = torch.tensor([1 - b, 1 - c, 1 - s, -h])
    hi = torch.tensor([1 + b, 1 + c, 1 + s, h])
    factors = lo + (hi - lo) * torch.rand(V, 4, generator=gen)
    order = torch.rand(V, 4, generator=gen).argsort(1)  # a uniform permutation per view
    sigma = SIGMA[0] + (SIGMA[1] - SIGMA[0]) * torch.rand(V, generator=gen)
    return AugParams(
        box=box, jitter=u[:, 0] < P_JITTER, factors=factors, order=order, gray=u[:, 1] < P_GRAY,
        blur=(u[:, 2] < P_BLUR) & blur, sigma=sigma, flip=u[:, 3] < P_FLIP,
    )


def pack_groups(heights: list[int], widths: list[int], slack: float = 1.5) -> list[list[int]]:
    """Group images so that padding each group to its largest size costs at most ``slack`` x.

    Sorted by size, so a batch of mostly 500x375 photos forms one or two groups and a rare
    3000x4000 one gets its own instead of inflating everyone's canvas.
    """
    order = sorted(range(len(heights)), key=lambda k: (heights[k], widths[k]))
    groups: list[list[int]] = []
    cur: list[int] = []
    mh = mw = pixels = 0
    for k in order:
        h, w = heights[k], widths[k]
        nh, nw = max(mh, h), max(mw, w)
        if cur and nh * nw * (len(cur) + 1) > slack * (pixels + h * w):
            groups.append(cur)
            cur, nh, nw, pixels = [], h, w, 0
        cur.append(k)
        mh, mw, pixels = nh, nw, pixels + h * w
    if cur:
        groups.append(cur)
    return groups


def resized_crops(images: list[torch.Tensor], image_of: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``box[v]`` out of ``images[image_of[v]]`` and resize it to size x size.

    images: uint8 [3, h, w] tensors on one device; image_of [V], box [V, 4] (i, j, h, w) on the CPU.
    Returns float32 [V, 3, size, size] in [0, 1] on the images' device.
    """
    dev = images[0].device
    V = image_of.shape[0]
    out = torch.empty(V, 3, size, size, device=dev)
    hs = [int(im.shape[1]) for im in images]
    ws = [int(im.shape[2]) for im in images]
    for group in pack_groups(hs, ws):
        H, W = max(hs[k] for k in group), max(ws[k] for k in group)
        canvas = torch.empty(len(group), 3, H, W, dtype=torch.uint8, device=dev)
        for slot, k in enumerate(group):
            h, w = hs[k], ws[k]
            canvas[slot, :, :h, :w] = images[k]
            # Replicate the last row and column into the padding: bilinear samples within half a
            # pixel of the border then read the edge, as they would in the unpadded image.
            if w < W:
                canvas[slot, :, :h, w:] = images[k][:, :, w - 1 : w]
            if h < H:
                canvas[slot, :, h:, :] = canvas[slot, :, h - 1 : h, :]
        slot_of = torch.full((len(images),), -1, dtype=torch.long)
        slot_of[torch.tensor(group)] = torch.arange(len(group))
        views = (slot_of[image_of] >= 0).nonzero()[:, 0]
        i, j, h, w = box[views].double().unbind(1)
        rois = torch.stack([slot_of[image_of[views]].double(), j, i, j + w, i + h], 1).float()
        crops = roi_align(canvas.float().div_(255), rois.to(dev, non_blocking=True), (size, size),
                          spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        out.index_copy_(0, views.to(dev, non_blocking=True), crops)
    return out


def _subset(x: torch.Tensor, mask: torch.Tensor, fn, *args: torch.Tensor) -> None:
    """x[mask] = fn(x[mask], *(a[mask])) in place, the mask and args living on the CPU."""
    idx = mask.nonzero()[:, 0]
    if idx.numel() == 0:
        return
    dev = x.device
    idx_d = idx.to(dev, non_blocking=True)
    sel = [a[idx].to(dev, non_blocking=True) for a in args]
    x.index_copy_(0, idx_d, fn(x.index_select(0, idx_d), *sel))


_JITTER_OPS = (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
    lambda x, f: adjust_hue(x, f * (2 * math.pi)),  # torchvision's hue is in turns, kornia's in radians
)


def color_blur_flip(x: torch.Tensor, p: AugParams, image_size: int) -> torch.Tensor:
    """Apply aug+'s colour jitter, grayscale, blur and flip to x [V, 3, S, S] in [0, 1], in place."""
    for pos in range(4):
        for op, fn in enumerate(_JITTER_OPS):
            _subset(x, p.jitter & (p.order[:, pos] == op), fn, p.factors[:, op].contiguous())
    _subset(x, p.gray, lambda t: rgb_to_grayscale(t).expand(-1, 3, -1, -1))
    k = blur_kernel(image_size)
    _subset(x, p.blur, lambda t, s: gaussian_blur2d(t, (k, k), torch.stack([s, s], 1), border_type="reflect"),
            p.sigma)
    _subset(x, p.flip, lambda t: t.flip(-1))
    return x


def normalize(x: torch.Tensor, dtype: torch.dtype = torch.float32, channels_last: bool = True) -> torch.Tensor:
    """ImageNet mean/std, cast to ``dtype``, channels_last or contiguous."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean).div_(std)
    return x.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def finish_views(x: torch.Tensor, p: AugParams, image_size: int, dtype: torch.dtype = torch.float32,
                 channels_last: bool = True, mark=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour, blur, flip and normalise 2B crops x [2B, 3, S, S] in [0, 1] (the q views, then the k
    views): (view_q, view_k), each [B, 3, S, S] ``dtype``. ``mark(stage)``, if given, is called
    after each stage (the benchmark's profile)."""
    mark = mark or (lambda stage: None)
    x = color_blur_flip(x, p, image_size)
    mark("jitter+gray+blur+flip")
    x = normalize(x, dtype, channels_last)
    mark("normalize")
    B = x.shape[0] // 2
    return x[:B], x[B:]


def two_views(images: list[torch.Tensor], gen: torch.Generator, image_size: int, min_scale: float = 0.2,
              blur: bool = True, dtype: torch.dtype = torch.float32, channels_last: bool = True,
              mark=None) -> tuple[torch.Tensor, torch.Tensor]:
    """aug+ twice per image of uint8 [3, h, w] ``images``: (view_q, view_k), each [B, 3, S, S]
    ``dtype``, channels_last or contiguous. ``mark`` as in ``finish_views``."""
    mark = mark or (lambda stage: None)
    B = len(images)
    hs = torch.tensor([int(im.shape[1]) for im in images])
    ws = torch.tensor([int(im.shape[2]) for im in images])
    image_of = torch.arange(B).repeat(2)
    p = sample_params(hs[image_of], ws[image_of], gen, min_scale, blur)
    mark("sample parameters")
    x = resized_crops(images, image_of, p.box, image_size)
    mark("crop+resize")
    return finish_views(x, p, image_size, dtype, channels_last, mark)
