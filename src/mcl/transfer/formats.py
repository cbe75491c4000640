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
