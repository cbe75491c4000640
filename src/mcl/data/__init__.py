"""Data: image sources (folder / COCO json / txt), robust decoding, MCL multi-crop views, synthetic scenes."""

from mcl.data.sources import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    SkipReport,
    SourceError,
    UnreadableImage,
    collate_views,
    list_images,
    load_rgb,
)
from mcl.data.synthetic import CATEGORIES, SyntheticScenes, render_scene, write_coco_scenes
from mcl.data.views import IMAGENET_MEAN, IMAGENET_STD, MultiCropViews, RandomGaussianBlur, ViewParams

__all__ = [
    "CATEGORIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "MultiCropViews",
    "RandomGaussianBlur",
    "SkipReport",
    "SourceError",
    "SyntheticScenes",
    "UnreadableImage",
    "ViewParams",
    "collate_views",
    "list_images",
    "load_rgb",
    "render_scene",
    "write_coco_scenes",
]
