"""The course's CNN zoo, one file per family (as in timm and torchvision). Importing this package registers every
model in `deepcourse.registry.MODELS`; builders take the recipe's `[model]` keys plus the data facts
`num_classes`, `in_channels` and `image_size`."""
from . import (  # noqa: F401 - importing registers the models
    airbench,
    alexnet,
    densenet,
    googlenet,
    lenet,
    mlp,
    resnet,
    simple_cnn,
    vgg,
)
