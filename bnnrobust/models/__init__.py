"""The model zoo: CIFAR ResNet-18/50, VGG-16, DenseNet-121, MobileNet-V2 and a small ConvNet.

Every model takes ``num_classes, in_channels, width, binarizer, keep_first_last, mean, std``;
``create_model("resnet18", num_classes=10, binarizer="md_tanh_s")`` builds one by name.
A new architecture = one file with ``@register_model("name")`` + one import line below.
"""

# Architectures (importing a module registers it).
from bnnrobust.models.convnet import ConvNet
from bnnrobust.models.densenet import DenseNet121
from bnnrobust.models.mobilenet import MobileNetV2
from bnnrobust.models.normalize import Normalize
from bnnrobust.models.registry import MODEL_REGISTRY, create_model, list_models, register_model
from bnnrobust.models.resnet import ResNet18, ResNet50
from bnnrobust.models.vgg import VGG16

__all__ = [
    "MODEL_REGISTRY",
    "ConvNet",
    "DenseNet121",
    "MobileNetV2",
    "Normalize",
    "ResNet18",
    "ResNet50",
    "VGG16",
    "create_model",
    "list_models",
    "register_model",
]
