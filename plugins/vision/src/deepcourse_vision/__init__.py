"""deepcourse-vision: image classification for deepcourse.

Importing this package registers the `image-classification` task, the datasets (cifar10, mnist, fashion_mnist,
digits, imagefolder), the batched transforms and the CNN zoo. deepcourse imports it through the
`deepcourse.plugins` entry point.
"""
from . import augment, data, models, task, transforms  # noqa: F401 - importing registers the components

__version__ = "0.1.0"
#: imported lazily by the components; `deepcourse plugins` imports them before it reports this plugin "ok"
HEAVY_MODULES = ("torchvision", "PIL", "pyarrow")
