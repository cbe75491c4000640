"""The export formats (``mcl export --format``), in a module with no heavy imports (the CLI's parser reads it)."""

FORMATS = ("torchvision-maskrcnn", "torchvision-fasterrcnn", "torchvision-retinanet", "torchvision-keypointrcnn",
           "semantic-fpn", "torchvision-resnet", "detectron2", "mmdet")
# the torchvision detector formats and the detector mcl.transfer.detection.build_detector makes for them
DETECTOR_OF = {"torchvision-maskrcnn": "maskrcnn", "torchvision-fasterrcnn": "fasterrcnn",
               "torchvision-retinanet": "retinanet", "torchvision-keypointrcnn": "keypointrcnn"}
# the formats whose detector has the 4conv1fc box head our neck's convs become
BOX_HEAD_FORMATS = ("torchvision-maskrcnn", "torchvision-fasterrcnn", "torchvision-keypointrcnn", "detectron2",
                    "mmdet")
# frameworks whose config names a ResNet by depth only: plain ResNets 18-101 (ResNeXt, wide and 152: torchvision)
DEPTH_ONLY_FORMATS = ("detectron2", "mmdet")
DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
# what their configs set for our weights: torchvision's ImageNet mean / std in 0-255 units, RGB order
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]
