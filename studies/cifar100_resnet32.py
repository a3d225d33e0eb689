"""CIFAR-100 with ResNet-32: the NeVe paper's headline setting (69.18% with NeVe against
68.84% for the baseline schedule, as the paper reports).

The same study as ``cifar10_resnet32.py`` (SGD, initial LR 0.1, momentum 0.9, weight
decay 5e-4, batch 100, at most 250 epochs, half a GPU per trial) on
``$NEVE_DATA/cifar-100-python`` (torchvision format; nothing is downloaded at run time).

    neve-tune optuna worker studies/cifar100_resnet32.py --storage postgresql://... --trials 20
"""

from neve_tune import load_study

STUDY = load_study("cifar10_resnet32").replace(name="cifar100_resnet32", data="cifar100")
