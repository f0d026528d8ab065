"""Detection data in the standard on-disk formats, and a small real-image detection set built locally.

- ``VOCDetection``: ``VOCdevkit/VOC<year>/{JPEGImages,Annotations,ImageSets/Main/<split>.txt}``.
  Boxes come out in detectron2's model coordinates (XML xmin, ymin minus 1), labels 1..C
  (0 is torchvision's background), plus each object's ``difficult`` flag.
- ``COCODetection``: an images folder and an ``instances_*.json``; boxes as x1, y1, x2, y2, labels
  1..C in the order of the categories, instance masks decoded from polygons or RLE.
- ``make_synthetic``: real Fashion-MNIST items pasted onto 128 x 128 textured canvases, with
  boxes and instance masks, written in both formats (VOC XML + COCO JSON), for tests and the demo.
  Both are also what detectron2's readers and evaluators take: the XML carries ``<pose>`` and
  ``<truncated>`` (its Pascal VOC evaluator reads them), the masks are COCO polygons (what its
  recipes' default ``INPUT.MASK_FORMAT polygon`` reads), and ``VOCdevkit/classes.txt`` names the
  set's own 10 classes.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pretrain.run.errors import UserError


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def voc_class_names(root: str | Path, year: str = "2007") -> list[str]:
    """The 20 PASCAL VOC classes, or the list in ``VOCdevkit/classes.txt`` (a locally built set)."""
    f = Path(root) / "classes.txt"
    return f.read_text().split() if f.is_file() else list(VOC_CLASSES)


def voc_object_names(base: str | Path, split: str) -> dict[str, str]:
    """{class name: the first annotation naming it (``VOC2007/Annotations/ID.xml``)} over the
    objects of a VOC split (``base`` is ``VOCdevkit/VOC<year>``), as detectron2's reader takes them."""
    base = Path(base)
    found: dict[str, str] = {}
    for img_id in (base / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
        xml = base / "Annotations" / f"{img_id}.xml"
        if not xml.is_file():
            raise UserError(f"{xml} is missing, which {base.name}/ImageSets/Main/{split}.txt lists")
        for obj in ET.parse(xml).getroot().findall("object"):
            found.setdefault(obj.findtext("name").strip(), f"{base.name}/Annotations/{xml.name}")
    return found


def _image_tensor(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class VOCDetection(torch.utils.data.Dataset):
    """PASCAL VOC detection: ``(image [3, H, W] in [0, 1], target)`` for each id of the split lists."""

    def __init__(self, root: str | Path, years: list[str], split: str, class_names: list[str]):
        self.class_names = list(class_names)
        self.items: list[tuple[Path, str]] = []
        for year in years:
            base = Path(root) / f"VOC{year}"
            ids = base / "ImageSets" / "Main" / f"{split}.txt"
            if not ids.is_file():
                raise UserError(f"VOC {year} {split}: {ids} does not exist (expected VOCdevkit/VOC{year}/...)")
            self.items += [(base, i.strip()) for i in ids.read_text().split() if i.strip()]

    def __len__(self) -> int:
        return len(self.items)

    def annotation(self, k: int) -> dict:
        """Ground truth in XML coordinates, as the VOC evaluator reads it."""
        base, img_id = self.items[k]
        root = ET.parse(base / "Annotations" / f"{img_id}.xml").getroot()
        boxes, labels, difficult = [], [], []
        for obj in root.findall("object"):
            name = obj.findtext("name").strip()
            if name not in self.class_names:
                continue
            bb = obj.find("bndbox")
            boxes.append([float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(self.class_names.index(name))
            difficult.append(int(obj.findtext("difficult") or 0) == 1)
        return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels, np.int64),
                "difficult": np.array(difficult, bool)}

    def __getitem__(self, k: int):
        base, img_id = self.items[k]
        ann = self.annotation(k)
        boxes = ann["boxes"].copy()
        boxes[:, :2] -= 1.0  # detectron2's loader: XML pixel indices are 1-based
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(ann["labels"] + 1),
                  "difficult": torch.from_numpy(ann["difficult"]), "image_id": f"{base.name}/{img_id}"}
        return _image_tensor(base / "JPEGImages" / f"{img_id}.jpg"), target


class COCODetection(torch.utils.data.Dataset):
    """COCO instances: ``(image, target)`` with boxes, labels and masks [N, H, W] (uint8)."""

    def __init__(self, images: str | Path, annotations: str | Path):
        self.images, ann = Path(images), Path(annotations)
        if not self.images.is_dir():
            raise UserError(f"COCO images folder {self.images} does not exist")
        if not ann.is_file():
            raise UserError(f"COCO annotations {ann} do not exist")
        self.gt = json.loads(ann.read_text())
        self.cat_ids = [c["id"] for c in self.gt["categories"]]
        self.class_names = [c["name"] for c in self.gt["categories"]]
        self.by_image: dict[int, list[dict]] = {}
        for a in self.gt["annotations"]:
            self.by_image.setdefault(a["image_id"], []).append(a)
        self.image_list = self.gt["images"]

    def __len__(self) -> int:
        return len(self.image_list)

    def __getitem__(self, k: int):
        from pycocotools import mask as mask_util

        info = self.image_list[k]
        h, w = info["height"], info["width"]
        anns = [a for a in self.by_image.get(info["id"], []) if not a.get("iscrowd", 0)]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        masks = []
        for a in anns:
            seg = a["segmentation"]
            rles = mask_util.frPyObjects(seg, h, w) if isinstance(seg, list) else \
                [seg if isinstance(seg["counts"], str) else mask_util.frPyObjects(seg, h, w)]
            masks.append(mask_util.decode(mask_util.merge(rles) if len(rles) > 1 else rles[0]).reshape(h, w))
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.cat_ids.index(a["category_id"]) + 1 for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)),
            "image_id": info["id"],
        }
        return _image_tensor(self.images / info["file_name"]), target


def _voc_xml(img_id: str, size: int, objects: list[tuple[str, list[int]]]) -> str:
    # pose and truncated as VOC writes them: detectron2's Pascal VOC evaluator reads both
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return (f"<annotation><filename>{img_id}.jpg</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def silhouette(mask: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The object a pixel mask [H, W] (bool) outlines: its largest 4-connected part with each row
    filled from its leftmost to its rightmost pixel, as a mask [H, W] and as one COCO polygon
    (x, y, ...) on pixel corners, which pycocotools rasterises back to exactly that mask.

    A row-filled 4-connected region is a simple staircase polygon (consecutive rows overlap, so the
    left and right chains never meet): down the left edges, then up the right edges.
    """
    from scipy import ndimage

    parts, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, bool), []
    sizes = ndimage.sum_labels(mask, parts, range(1, n + 1))
    part = parts == 1 + int(np.argmax(sizes))
    rows = np.nonzero(part.any(1))[0]
    left = [int(np.argmax(part[y])) for y in rows]
    right = [int(part.shape[1] - np.argmax(part[y, ::-1])) for y in rows]  # one past the last pixel
    filled = np.zeros_like(mask, bool)
    for y, x0, x1 in zip(rows, left, right):
        filled[y, x0:x1] = True
    down = [c for y, x in zip(rows, left) for c in (x, y, x, y + 1)]
    up = [c for y, x in zip(rows[::-1], right[::-1]) for c in (x, y + 1, x, y)]
    return filled, [float(c) for c in down + up]


def make_synthetic(out: str | Path, n_train: int = 200, n_test: int = 50, size: int = 128, seed: int = 0,
                   data_path: str | None = None) -> dict:
    """Write the detection set into ``out`` (VOCdevkit/VOC2007 and coco/); returns its class names.

    Each image: 1-3 real Fashion-MNIST items (training split for trainval, test split for test),
    scaled 1.5-3x, pasted without overlap on a smooth random texture; the object is the
    ``silhouette`` of the item's pixels above 15% intensity (a COCO polygon), the box its tight
    extent (VOC XML 1-based inclusive, COCO x, y, w, h).
    """
    from pretrain.input import data
    from pretrain.run import config

    rng = np.random.default_rng(seed)
    out = Path(out)
    voc = out / "VOCdevkit" / "VOC2007"
    for d in (voc / "JPEGImages", voc / "Annotations", voc / "ImageSets" / "Main", out / "coco" / "annotations"):
        d.mkdir(parents=True, exist_ok=True)
    cfg = config.DataCfg(dataset="fashion-mnist", path=data_path)
    names = None
    next_id = 1
    for split, n, coco_split in (("trainval", n_train, "train"), ("test", n_test, "val")):
        src = data.base_dataset(cfg, "train" if split == "trainval" else "test")
        if names is None:
            names = [c.lower().replace("/", "_").replace("-", "").replace(" ", "_") for c in src.classes]
        (out / "coco" / coco_split).mkdir(parents=True, exist_ok=True)
        images, anns, ids = [], [], []
        for k in range(n):
            img_id = f"{split[:2]}{k:05d}"
            # a smooth texture: upsampled coarse noise, so the background is not trivially flat
            coarse = rng.uniform(0, 120, size=(8, 8, 3)).astype(np.uint8)
            canvas = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
            objects, taken = [], np.zeros((size, size), bool)
            coco_objs = []
            for _ in range(int(rng.integers(1, 4))):
                item, label = src[int(rng.integers(len(src)))]
                side = int(28 * rng.uniform(1.5, 3.0))
                patch = np.asarray(item.convert("L").resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
                mask, _ = silhouette(patch > 0.15)
                if not mask.any():
                    continue
                for _try in range(20):
                    x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
                    if not taken[y:y + side, x:x + side][mask].any():
                        break
                else:
                    continue
                full = np.zeros((size, size), bool)
                full[y:y + side, x:x + side] = mask
                taken |= full
                color = rng.uniform(150, 255, size=3)
                canvas[full] = (patch[mask][:, None] * color).clip(0, 255)
                ys, xs = np.nonzero(full)
                x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
                objects.append((names[label], [x0 + 1, y0 + 1, x1 + 1, y1 + 1]))
                _, polygon = silhouette(full)
                coco_objs.append({"id": next_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                                  "area": int(full.sum()), "iscrowd": 0, "segmentation": [polygon]})
                next_id += 1
            im = Image.fromarray(canvas.astype(np.uint8))
            im.save(voc / "JPEGImages" / f"{img_id}.jpg", quality=95)
            im.save(out / "coco" / coco_split / f"{img_id}.jpg", quality=95)
            (voc / "Annotations" / f"{img_id}.xml").write_text(_voc_xml(img_id, size, objects))
            ids.append(img_id)
            images.append({"id": k + 1, "file_name": f"{img_id}.jpg", "width": size, "height": size})
            anns += [{**a, "image_id": k + 1} for a in coco_objs]
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (out / "VOCdevkit" / "classes.txt").write_text("\n".join(names) + "\n")
        cats = [{"id": i + 1, "name": c} for i, c in enumerate(names)]
        (out / "coco" / "annotations" / f"instances_{coco_split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"class_names": names}
