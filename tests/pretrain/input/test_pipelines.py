"""The device input pipelines (data.pipeline=gpu|dali) on a folder of generated JPEGs: header
parsing, the CPU fallback for files nvjpeg rejects, skipped files, determinism, resume, and the
CUDA-only parts where a GPU exists."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from pretrain.input import gpu_aug
from pretrain.input import pipelines as pipeline
from pretrain.run import config
from pretrain.tools.jpegs import make_jpegs
from pretrain.train import train

from tests.conftest import tiny_cfg

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device: nvjpeg decoding and side-stream prefetch")
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory):
    return make_jpegs(tmp_path_factory.mktemp("jpegs"), 40, classes=4, seed=0, odd=True)


def odd(jpeg_dir, kind):
    return next((jpeg_dir / "train").rglob(f"odd_{kind}.JPEG"))


def payload(path):
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))


def cfg_for(jpeg_dir, *extra):
    return config.load(overrides=[
        "data.dataset=imagefolder", f"data.path={jpeg_dir}", "data.pipeline=gpu", "optim.batch_size=9",
        "moco.K=36", "data.image_size=32", "data.num_workers=0", "model.arch=resnet18", "run.amp=false",
        "run.channels_last=false", *extra,
    ])


def test_jpeg_header_reads_sizes_and_kinds(jpeg_dir):
    files = sorted((jpeg_dir / "train").rglob("img*.JPEG"))
    for f in files[:10]:
        with Image.open(f) as im:
            assert pipeline.jpeg_header(payload(f).numpy()) == (im.height, im.width, 3, False)
    assert pipeline.jpeg_header(payload(odd(jpeg_dir, "progressive")).numpy()) == (240, 320, 3, True)
    assert pipeline.jpeg_header(payload(odd(jpeg_dir, "cmyk")).numpy())[2] == 4
    assert pipeline.jpeg_header(payload(odd(jpeg_dir, "grayscale")).numpy())[2] == 1
    assert pipeline.jpeg_header(payload(odd(jpeg_dir, "png")).numpy()) is None
    assert pipeline.jpeg_header(b"\xff\xd8\xff") is None and pipeline.jpeg_header(b"") is None
    assert pipeline.jpeg_header(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None  # cut before the frame header
    ok = [pipeline.gpu_decodable(pipeline.jpeg_header(payload(odd(jpeg_dir, k)).numpy()))
          for k in ("progressive", "cmyk", "grayscale", "png")]
    assert ok == [False] * 4
    assert pipeline.gpu_decodable(pipeline.jpeg_header(payload(files[0]).numpy()))


def test_decoder_falls_back_to_cpu_and_counts_skipped(jpeg_dir):
    kinds = ["progressive", "cmyk", "grayscale", "png", "truncated"]
    good = sorted((jpeg_dir / "train").rglob("img*.JPEG"))[0]
    dec = pipeline.Decoder(torch.device("cpu"))
    out = dec([payload(good)] + [payload(odd(jpeg_dir, k)) for k in kinds] + [torch.zeros(0, dtype=torch.uint8)])
    with Image.open(good) as im:
        assert torch.equal(out[0], torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
    for img in out[1:5]:
        assert img.shape == (3, 240, 320) and img.dtype == torch.uint8
    # CMYK converted to RGB: a real photo, not the raw ink channels.
    with Image.open(odd(jpeg_dir, "cmyk")) as im:
        ref = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float()
    assert (out[2].float() - ref).abs().mean() < 3
    assert out[6] is None  # an unreadable file
    skipped = dec.counts["skipped"]
    assert dec.counts["cpu"] + skipped == 7 and skipped in (1, 2)  # libjpeg may pad a truncated file
    assert pipeline.refill(out) == [0, 1, 2, 3, 4, 5, 0] if out[5] is not None else [0, 1, 2, 3, 4, 0, 0]


def test_refill_keeps_batch_size_and_raises_when_nothing_decodes():
    x = torch.zeros(3, 2, 2)
    assert pipeline.refill([None, x, None, x]) == [1, 1, 3, 3]
    assert pipeline.refill([x, None, None]) == [0, 0, 0]
    with pytest.raises(RuntimeError, match="none of the 2 images"):
        pipeline.refill([None, None])


def _epoch(cfg):
    batches, sampler = pipeline.train_loader(cfg)
    sampler.set_epoch(0)
    return list(batches), batches


def test_gpu_pipeline_on_cpu_batches_are_deterministic_whatever_workers_and_prefetch(jpeg_dir):
    a, batches = _epoch(cfg_for(jpeg_dir, "data.num_workers=0", "data.prefetch=0"))
    b, _ = _epoch(cfg_for(jpeg_dir, "data.num_workers=2", "data.prefetch=2"))
    assert len(a) == len(b) == 45 // 9
    for (q, k, lab, idx, sk), (q2, k2, lab2, idx2, sk2) in zip(a, b):
        assert q.shape == k.shape == (9, 3, 32, 32) and q.dtype == torch.float32
        assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(lab, lab2) and sk == sk2
    # 45 files, one truncated and one empty-or-not: skipped ones are refilled, batches stay full.
    assert sum(s for *_, s in a) == batches.counts["skipped"] >= 1
    assert batches.counts["cpu"] + batches.counts["skipped"] == 45
    # Another epoch draws other views.
    batches2, sampler = pipeline.train_loader(cfg_for(jpeg_dir))
    sampler.set_epoch(1)
    assert not torch.equal(next(iter(batches2))[0], a[0][0])


def test_gpu_pipeline_views_follow_aug_plus_statistics(jpeg_dir):
    """Pixel statistics of gpu views match the PIL reference pipeline's on the same files."""
    stats = {}
    for name in ("cpu", "gpu"):
        cfg = cfg_for(jpeg_dir, f"data.pipeline={name}", "data.image_size=48")
        views = []
        for epoch in range(6):
            batches, sampler = pipeline.train_loader(cfg)
            sampler.set_epoch(epoch)
            views += [torch.cat([q, k]).float() for q, k, *_ in batches]
        x = torch.cat(views)
        stats[name] = (x.mean((0, 2, 3)), x.std((0, 2, 3)), (x[:, 0] - x[:, 1]).abs().mean())
    for ref, ours in zip(stats["cpu"], stats["gpu"]):
        assert torch.allclose(ref, ours, atol=0.08), (ref, ours)


def test_bfloat16_output_and_config_errors(jpeg_dir):
    (q, *_), _ = next(iter([(b, None) for b in _epoch(cfg_for(jpeg_dir, "data.dtype=bfloat16"))[0]]))
    assert q.dtype == torch.bfloat16 and q.is_contiguous()  # the memory format of a contiguous model
    # Device-generic: the memory format follows run.channels_last, and auto dtype follows run.amp, on a CPU too.
    q = _epoch(cfg_for(jpeg_dir, "run.channels_last=true", "run.amp=true"))[0][0][0]
    assert q.dtype == torch.bfloat16 and q.is_contiguous(memory_format=torch.channels_last) and not q.is_contiguous()
    for bad, msg in [("data.pipeline=fast", "data.pipeline: 'fast' is not one of cpu, gpu, dali"),
                     ("data.dtype=half", "data.dtype: 'half'"), ("data.prefetch=-1", "data.prefetch: must be >= 0")]:
        with pytest.raises(config.UserError, match=msg):
            cfg_for(jpeg_dir, bad)


def test_training_on_jpegs_with_gpu_pipeline_resumes_exactly(tmp_path, jpeg_dir):
    common = [f"data.path={jpeg_dir}", "data.dataset=imagefolder", "data.pipeline=gpu", "data.subset=0",
              "optim.batch_size=9", "moco.K=36", "mochi.N=16", "mochi.s=8", "mochi.s_prime=4", "mochi.mix_start=0",
              "data.num_workers=1", "optim.epochs=2", "run.log_every=1"]
    ref = train(tiny_cfg(tmp_path / "ref", *common))
    train(tiny_cfg(tmp_path / "cut", *common, "run.max_steps=7"))  # stops mid-epoch 1 with a checkpoint
    got = train(tiny_cfg(tmp_path / "cut", *common))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k
    from pretrain.run.tracking import read_metrics

    steps = [r["step"] for r in read_metrics(tmp_path / "cut") if "loss" in r]
    assert steps == list(range(1, 11))


def test_show_command_writes_a_picture(tmp_path, jpeg_dir):
    out = tmp_path / "batch.png"
    r = subprocess.run([sys.executable, "-m", "pretrain.pipeline", "show", "--out", str(out), "--n", "4",
                        "--pipelines", "cpu,gpu", "data.dataset=imagefolder", f"data.path={jpeg_dir}",
                        "data.image_size=64", "optim.batch_size=4", "moco.K=8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        # 4 rows (images) x (source + 2 pipelines x 2 views) columns of 64 px tiles with 2 px gaps.
        assert im.size == (5 * 66 + 2, 4 * 66 + 2)
        arr = np.asarray(im.convert("RGB")).astype(float)
    assert arr.std() > 20  # pictures, not a blank canvas
    bad = subprocess.run([sys.executable, "-m", "pretrain.pipeline", "show", "--out", str(out), "--pipelines", "tpu"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--pipelines" in bad.stderr


@needs_dali
def test_dali_crops_match_the_torch_path(jpeg_dir):
    files = sorted((jpeg_dir / "train").rglob("img*.JPEG"))[:6]
    payloads = [payload(f) for f in files]
    images = pipeline.Decoder(torch.device("cpu"))(payloads)
    image_of = torch.arange(6).repeat(2)
    hs = torch.tensor([im.shape[1] for im in images])[image_of]
    ws = torch.tensor([im.shape[2] for im in images])[image_of]
    box = gpu_aug.crop_boxes(hs, ws, (0.2, 1.0), torch.Generator().manual_seed(0))
    dali = pipeline.DaliCrops(6, 48, torch.device("cpu"))
    ours = dali(payloads, box)
    ref = torch.stack([F.resized_crop(images[image_of[v]].float() / 255, *box[v].tolist(), [48, 48], antialias=True)
                       for v in range(12)])
    assert ours.shape == (12, 3, 48, 48)
    assert (ours - ref).abs().mean() < 0.01
    # A corrupt file makes DALI fail the batch; it is reported, and the next batch works again.
    bad = torch.tensor(list(payloads[0].numpy()[:2000]), dtype=torch.uint8)
    assert dali([bad] + payloads[1:], box) is None and dali.failures == 1
    assert dali(payloads, box) is not None


@needs_dali
def test_dali_pipeline_trains_a_batch(jpeg_dir):
    batches, counts = _epoch(cfg_for(jpeg_dir, "data.pipeline=dali"))
    assert all(q.shape == (9, 3, 32, 32) for q, *_ in batches)
    assert counts.counts["dali"] >= 9  # whole batches of baseline JPEGs went through DALI


@pytest.mark.gpu
@needs_cuda
def test_nvjpeg_decode_matches_cpu_decode(jpeg_dir):
    files = sorted((jpeg_dir / "train").rglob("*.JPEG"))
    dec = pipeline.Decoder(torch.device("cuda"))
    out = dec([payload(f) for f in files])
    cpu = pipeline.Decoder(torch.device("cpu"))([payload(f) for f in files])
    for g, c in zip(out, cpu):
        assert (g is None) == (c is None)
        if g is not None:
            assert g.device.type == "cuda" and (g.cpu().float() - c.float()).abs().mean() < 2
    assert dec.counts["gpu"] >= 40 and dec.counts["cpu"] >= 4


@pytest.mark.gpu
@needs_cuda
def test_cuda_prefetch_equals_inline(jpeg_dir):
    def run(prefetch):
        cfg = cfg_for(jpeg_dir, f"data.prefetch={prefetch}", "run.device=cuda")
        batches, sampler = pipeline.train_loader(cfg, device=torch.device("cuda"))
        sampler.set_epoch(0)
        return [(q.float().cpu(), k.float().cpu()) for q, k, *_ in batches]

    for (q, k), (q2, k2) in zip(run(0), run(2)):
        assert torch.allclose(q, q2, atol=1e-5) and torch.allclose(k, k2, atol=1e-5)


def test_workers_read_bytes_and_header_only(jpeg_dir):
    from pretrain.input import data

    ds = pipeline.EncodedImages(data.image_folder(str(jpeg_dir), None))
    kinds = {}
    for i, (path, label) in enumerate(ds.base.samples):
        p, lab, index, header, epoch = ds[(3, i)]
        assert torch.equal(p, payload(path)) and lab == label and index == i  # the file's bytes, undecoded
        assert epoch == 3  # the sampler's epoch travels with the batch and seeds its views
        kinds[Path(path).stem] = header
    assert kinds["odd_progressive"] == (240, 320, 0) and kinds["odd_cmyk"] == (240, 320, 0)
    assert kinds["odd_png"] == (0, 0, 0)
    assert all(h[2] == 1 and h[0] > 0 for k, h in kinds.items() if k.startswith("img"))


def _ddp_worker(rank, port, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = train(tiny_cfg(out, "optim.epochs=1", "data.subset=256", "data.pipeline=gpu", "data.num_workers=1"))
    torch.save({"queue": model.queue, "q": model.encoder_q.state_dict()}, out.parent / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_gpu_pipeline_under_ddp_keeps_replicas_identical(tmp_path):
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    mp.spawn(_ddp_worker, args=(free_port(), tmp_path / "run"), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["queue"], r1["queue"])
    for k in r0["q"]:
        if k.endswith(("weight", "bias")):
            assert torch.equal(r0["q"][k], r1["q"][k]), k
