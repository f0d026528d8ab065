"""Input pipelines for pretraining, chosen by ``data.pipeline``.

- ``cpu``: the reference. Loader workers decode with PIL and apply torchvision's aug+ per image
  (``pretrain.data``).
- ``gpu``: workers only read the encoded bytes (plus label, index and the JPEG header's size);
  the batch is decoded on the device (nvjpeg through ``torchvision.io.decode_jpeg`` on CUDA, in
  one batched call), and aug+ runs batched with per-sample parameters (``pretrain.gpu_aug``).
  Files nvjpeg cannot take (progressive, CMYK, grayscale, not a JPEG) are decoded on the CPU;
  files nothing can decode are skipped and counted, their slot refilled from another image of the
  batch so the batch keeps its size.
- ``dali``: as ``gpu``, but NVIDIA DALI's mixed decoder decodes, crops and resizes (with the crop
  boxes drawn by ``gpu_aug``, so the views have the same distribution); colour, blur, flip and
  normalisation are ``gpu_aug``'s. Needs the ``nvidia-dali-cuda*`` wheel; runs on the CPU too.

Both device pipelines run one batch ahead in a thread on a side CUDA stream, so decoding and
augmentation overlap the training step; every batch's parameters come from a generator seeded by
(seed, epoch, the batch's indices), so a run is reproducible and resumes exactly, whatever the
timing. ``mochi-pipeline show`` writes a picture of a batch for a visual check
(``pretrain.tools.show``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import threading
import time
from collections import Counter

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode

from . import data, gpu_aug
from ..run.config import PIPELINES  # noqa: F401 - the names; this module builds them
from ..run.errors import UserError

log = logging.getLogger(__name__)

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


def jpeg_header(buf) -> tuple[int, int, int, bool] | None:
    """(height, width, components, progressive) from a JPEG's frame header, or None if the bytes
    are not a JPEG with a readable header. ``buf``: bytes or a uint8 array (not copied)."""
    mv = memoryview(buf).cast("B")
    n = len(mv)
    if n < 4 or mv[0] != 0xFF or mv[1] != 0xD8:
        return None
    pos = 2
    while pos + 4 <= n:
        if mv[pos] != 0xFF:
            return None
        m = mv[pos + 1]
        if m == 0xFF:  # fill byte
            pos += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD7:  # markers without a length
            pos += 2
            continue
        if m in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if m in _SOF:
            if pos + 10 > n:
                return None
            h = mv[pos + 5] << 8 | mv[pos + 6]
            w = mv[pos + 7] << 8 | mv[pos + 8]
            return (h, w, mv[pos + 9], m in _PROGRESSIVE) if h and w else None
        pos += 2 + (mv[pos + 2] << 8 | mv[pos + 3])
    return None


def gpu_decodable(header: tuple[int, int, int, bool] | None) -> bool:
    """nvjpeg's batched path takes baseline/extended 3-channel JPEGs; the rest go to the CPU."""
    return header is not None and header[2] == 3 and not header[3]


# ---------------------------------------------------------------------------------------------
# Workers: encoded bytes only
class EncodedImages(torch.utils.data.Dataset):
    """(payload, label, index, header, epoch) for keys (epoch, index) from ``data.ResumableSampler``.

    payload: the file's bytes (uint8 [n]) for image folders; the pixels (uint8 [h, w]) for
    in-memory arrays such as Fashion-MNIST, which have nothing to decode. header: (h, w, nvjpeg
    can take it) from the JPEG header, (0, 0, 0) where there is none; parsed here so the decoding
    thread does not spend its time (and the GIL) on it.
    """

    def __init__(self, base: torch.utils.data.Dataset):
        indices = None
        if isinstance(base, torch.utils.data.Subset):
            base, indices = base.dataset, list(base.indices)
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        i = self.indices[index] if self.indices is not None else index
        if isinstance(self.base, data.ArrayImages):
            img = self.base.images[i]
            pixels = torch.from_numpy(np.ascontiguousarray(img))
            return pixels, int(self.base.labels[i]), index, (*img.shape[:2], 0), epoch
        path, label = self.base.samples[i]
        try:
            payload = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        except OSError as e:
            log.warning("unreadable file %s: %s", path, e)
            payload = torch.empty(0, dtype=torch.uint8)
        header = jpeg_header(payload.numpy()) if payload.numel() else None
        return payload, label, index, (*header[:2], int(gpu_decodable(header))) if header else (0, 0, 0), epoch


def collate_encoded(batch):
    payloads, labels, index, headers, epochs = zip(*batch)
    return list(payloads), torch.tensor(labels), torch.tensor(index), torch.tensor(headers), epochs[0]


# ---------------------------------------------------------------------------------------------
# Decoding
def decode_cpu(payload: torch.Tensor) -> torch.Tensor | None:
    """uint8 [3, h, w] from any image file torchvision or PIL can read, else None."""
    if payload.numel() == 0:
        return None
    try:
        return torchvision.io.decode_image(payload, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        pass
    try:
        with Image.open(io.BytesIO(payload.numpy().tobytes())) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def as_pixels(payload: torch.Tensor) -> torch.Tensor | None:
    """In-memory pixels (uint8 [h, w] or [h, w, c]) as [3, h, w]; None for encoded bytes."""
    if payload.dim() == 2:
        return payload[None].expand(3, -1, -1)
    if payload.dim() == 3:
        return payload.permute(2, 0, 1)[:3] if payload.shape[2] >= 3 else payload[..., :1].permute(2, 0, 1).expand(3, -1, -1)
    return None


class Decoder:
    """Decode a batch of payloads to uint8 [3, h, w] tensors on ``device``, counting where each went.

    On CUDA the baseline RGB JPEGs go to nvjpeg in one batched call; if that call fails, each of
    them is tried alone on the GPU, and what still fails joins the CPU path. ``counts`` holds
    ``gpu``, ``cpu`` (fallback decodes), ``pixels`` (nothing to decode) and ``skipped``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.counts: Counter = Counter()

    def _nvjpeg(self, payloads: list[torch.Tensor]) -> list[torch.Tensor | None]:
        try:
            return list(torchvision.io.decode_jpeg(payloads, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError as e:
            log.debug("batched nvjpeg decode failed (%s); decoding one by one", e)
        out: list[torch.Tensor | None] = []
        for p in payloads:
            try:
                out.append(torchvision.io.decode_jpeg(p, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                out.append(None)
        return out

    def __call__(self, payloads: list[torch.Tensor], gpu_ok: list[bool] | None = None) -> list[torch.Tensor | None]:
        """``gpu_ok[b]``: payload b is a JPEG nvjpeg takes (``gpu_decodable``); parsed here if not given."""
        out: list[torch.Tensor | None] = [None] * len(payloads)
        todo_cpu = []
        gpu_idx = []
        for b, p in enumerate(payloads):
            pix = as_pixels(p)
            if pix is not None:
                out[b] = pix.to(self.device, non_blocking=True)
                self.counts["pixels"] += 1
                continue
            if self.device.type == "cuda" and (
                gpu_ok[b] if gpu_ok is not None else gpu_decodable(jpeg_header(p.numpy()))
            ):
                gpu_idx.append(b)
            else:
                todo_cpu.append(b)
        if gpu_idx:
            for b, img in zip(gpu_idx, self._nvjpeg([payloads[b] for b in gpu_idx])):
                if img is None:
                    todo_cpu.append(b)
                else:
                    out[b] = img
                    self.counts["gpu"] += 1
        for b in todo_cpu:
            img = decode_cpu(payloads[b])
            if img is None:
                self.counts["skipped"] += 1
            else:
                out[b] = img.to(self.device)
                self.counts["cpu"] += 1
        return out


def refill(images: list) -> list[int]:
    """For each slot, the slot whose image it uses: itself, or for an undecodable image the next
    decodable one in the batch (cyclically), so the batch keeps its size (K is a multiple of it)."""
    B = len(images)
    good = [b for b in range(B) if images[b] is not None]
    if not good:
        raise RuntimeError(f"none of the {B} images of a batch could be decoded")
    src = []
    for b in range(B):
        if images[b] is not None:
            src.append(b)
        else:
            src.append(next((g for g in good if g > b), good[0]))
    return src


# ---------------------------------------------------------------------------------------------
# DALI: decode, crop and resize
class DaliCrops:
    """Decode + crop + resize two views per image with DALI; crops from ``gpu_aug`` boxes.

    On CUDA the decoder is DALI's ``mixed`` one (nvjpeg / hardware decoder, with DALI's own CPU
    fallback for progressive and CMYK files); without CUDA everything runs on DALI's CPU
    operators, which is how the tests run it. A batch DALI fails on (a corrupt file) is handed
    back so the caller can take the torch path for it; the DALI pipeline is then rebuilt.
    """

    def __init__(self, batch_size: int, image_size: int, device: torch.device, threads: int = 4):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise UserError(
                "config key data.pipeline: 'dali' needs NVIDIA DALI (pip install nvidia-dali-cuda120 or "
                "nvidia-dali-cuda130, matching your CUDA); use data.pipeline=gpu without it"
            ) from None
        self.batch_size, self.size, self.device, self.threads = batch_size, image_size, device, threads
        self.failures = 0
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        cuda = self.device.type == "cuda"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.threads,
                      device_id=(self.device.index or 0) if cuda else None, prefetch_queue_depth=1)
        def crops():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
            img = fn.decoders.image(jpegs, device="mixed" if cuda else "cpu", output_type=types.RGB,
                                    adjust_orientation=False)  # as PIL and torchvision: no EXIF rotation
            views = []
            for v in ("q", "k"):
                anchor = fn.external_source(name=f"anchor_{v}", dtype=types.FLOAT)
                shape = fn.external_source(name=f"shape_{v}", dtype=types.FLOAT)
                crop = fn.slice(img, anchor, shape, axis_names="WH", normalized_anchor=False,
                                normalized_shape=False, out_of_bounds_policy="error")
                crop = fn.resize(crop, resize_x=self.size, resize_y=self.size, antialias=True,
                                 interp_type=types.INTERP_LINEAR, dtype=types.FLOAT)
                views.append(fn.transpose(crop, perm=[2, 0, 1]))
            return tuple(views)

        pipe = crops()
        pipe.build()
        return pipe

    def _to_torch(self, out) -> torch.Tensor:
        if self.device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            t = out.as_tensor()
            res = torch.empty(t.shape(), dtype=torch.float32, device=self.device)
            feed_ndarray(t, res, cuda_stream=torch.cuda.current_stream(self.device))
            return res
        return torch.from_numpy(out.as_array())

    def __call__(self, payloads: list[torch.Tensor], box: torch.Tensor) -> torch.Tensor | None:
        """Views [2B, 3, S, S] in [0, 1] for B JPEG payloads and box [2B, 4] (i, j, h, w), or None
        if DALI failed on this batch."""
        B = len(payloads)
        if self._pipe is None:
            self._pipe = self._build()
        b = box.float().numpy()
        try:
            self._pipe.feed_input("jpegs", [p.numpy() for p in payloads])
            for v, rows in (("q", b[:B]), ("k", b[B:])):
                self._pipe.feed_input(f"anchor_{v}", [np.array([r[1], r[0]], np.float32) for r in rows])
                self._pipe.feed_input(f"shape_{v}", [np.array([r[3], r[2]], np.float32) for r in rows])
            q, k = self._pipe.run()
        except RuntimeError as e:
            self.failures += 1
            self._pipe = None  # DALI invalidates a pipeline after an error
            log.warning("DALI failed on a batch (%s); decoding it with torchvision", str(e).splitlines()[-1])
            return None
        return torch.cat([self._to_torch(q), self._to_torch(k)]).div_(255)


# ---------------------------------------------------------------------------------------------
# The device pipeline
class DeviceBatches:
    """Iterable of (view_q, view_k, labels, indices, skipped) batches built on ``device``.

    ``loader`` yields encoded batches (``collate_encoded``). Iterating runs one thread that
    decodes and augments up to ``prefetch`` batches ahead on a side CUDA stream; the consumer's
    stream waits on each batch's event. ``prefetch=0`` does everything inline.
    """

    def __init__(self, loader, seed: int, image_size: int, min_scale: float, blur: bool, device: torch.device,
                 dtype: torch.dtype = torch.float32, prefetch: int = 2, dali: DaliCrops | None = None,
                 channels_last: bool = True):
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # the prefetch thread sets it by index
        self.loader, self.seed, self.size, self.min_scale, self.blur = loader, seed, image_size, min_scale, blur
        self.device, self.dtype, self.prefetch, self.dali = device, dtype, prefetch, dali
        self.channels_last = channels_last
        self.decoder = Decoder(device)
        self.profile: dict[str, float] | None = None
        self._t = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def counts(self) -> Counter:
        return self.decoder.counts

    def batch_generator(self, epoch: int, index: torch.Tensor) -> torch.Generator:
        return torch.Generator().manual_seed(data.sample_seed(self.seed, epoch, *index.tolist()))

    def _mark(self, stage: str) -> None:
        """With ``self.profile`` a dict, add the time since the last mark to ``stage`` (synchronising
        the device so the time is the stage's own); a no-op otherwise."""
        if self.profile is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.profile[stage] = self.profile.get(stage, 0.0) + now - self._t
        self._t = now

    def process(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        payloads, labels, index, headers, epoch = batch
        B = len(payloads)
        self._t = time.perf_counter()
        if self.dali is not None and all(as_pixels(p) is None for p in payloads) and (headers[:, :2] > 0).all():
            image_of = torch.arange(B).repeat(2)
            p = gpu_aug.sample_params(headers[image_of, 0], headers[image_of, 1], self.batch_generator(epoch, index),
                                      self.min_scale, self.blur)
            x = self.dali(payloads, p.box)
            self._mark("dali decode+crop")
            if x is not None:
                self.decoder.counts["dali"] += B
                q, k = gpu_aug.finish_views(x, p, self.size, self.dtype, self.channels_last, self._mark)
                return q, k, labels.to(self.device, non_blocking=True), index, 0
        images = self.decoder(payloads, headers[:, 2].bool().tolist())
        self._mark("decode")
        src = refill(images)
        q, k = gpu_aug.two_views([images[s] for s in src], self.batch_generator(epoch, index), self.size,
                                 self.min_scale, self.blur, self.dtype, self.channels_last, self._mark)
        skipped = sum(s != b for b, s in enumerate(src))
        return q, k, labels[src].to(self.device, non_blocking=True), index[src], skipped

    def __iter__(self):
        if self.prefetch <= 0:
            for batch in self.loader:
                yield self.process(batch)
            return
        yield from self._prefetched()

    def _prefetched(self):
        cuda = self.device.type == "cuda"
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        end = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            if cuda:
                torch.cuda.set_device(self.device)  # a new thread starts on device 0; DDP ranks are not
            stream = torch.cuda.Stream(self.device) if cuda else None
            try:
                with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                    for batch in self.loader:
                        out = self.process(batch)
                        event = torch.cuda.Event() if cuda else None
                        if cuda:
                            event.record(stream)
                        if not put((out, event)):
                            return
            except BaseException as e:  # handed to the consumer, which raises it
                put(e)
                return
            put(end)

        thread = threading.Thread(target=work, name="device-batches", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                out, event = item
                if cuda:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for t in out[:3]:
                        t.record_stream(current)  # freed tensors must not be reused before this stream is done
                yield out
        finally:
            stop.set()
            thread.join(timeout=60)


def output_dtype(cfg) -> torch.dtype:
    """The device pipelines' output dtype: ``data.dtype``, where ``auto`` is bf16 under autocast
    (``run.amp``: the first convolution casts to bf16 anyway) and fp32 otherwise."""
    if cfg.data.dtype == "auto":
        return torch.bfloat16 if cfg.run.amp else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.data.dtype]


def train_loader(cfg, rank: int = 0, world: int = 1, device: torch.device | None = None):
    """(batches, sampler) for pretraining as ``data.pipeline`` says; call ``sampler.set_epoch``
    before each epoch."""
    device = device or torch.device("cpu")
    if cfg.data.pipeline == "cpu":
        return data.train_loader(cfg, rank, world, pin_memory=device.type == "cuda")
    loader, sampler = data.train_loader(cfg, rank, world, pin_memory=device.type == "cuda", wrap=EncodedImages,
                                        collate_fn=collate_encoded)
    dali = DaliCrops(sampler.bpr, cfg.data.image_size, device) if cfg.data.pipeline == "dali" else None
    if device.type != "cuda":
        log.info("data.pipeline=%s runs on the CPU here (no CUDA device)", cfg.data.pipeline)
    batches = DeviceBatches(loader, cfg.run.seed, cfg.data.image_size, cfg.data.min_scale, cfg.data.blur, device,
                            output_dtype(cfg), cfg.data.prefetch, dali,
                            channels_last=cfg.run.channels_last)  # the memory format of train.py's model
    return batches, sampler
