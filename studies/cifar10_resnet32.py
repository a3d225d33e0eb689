"""CIFAR-10 with ResNet-32 (He et al. 2016, option-A shortcuts): the NeVe paper's setting.

Authors' defaults: SGD, initial LR 0.1, momentum 0.9, weight decay 5e-4, batch 100, at
most 250 epochs; LR halved when the velocity change plateaus for 10 epochs; stop when the
velocity falls under the threshold. Data: ``$NEVE_DATA/cifar-10-batches-py`` (torchvision
format, nothing is downloaded at run time; ``--data-root`` to point elsewhere). Meant for
GPUs: two trials share one GPU (``resources``, used by Ray Tune).

    neve-tune optuna worker studies/cifar10_resnet32.py --storage postgresql://... --trials 20
"""

from neve_tune import Choice, LogUniform, Study

STUDY = Study(
    name="cifar10_resnet32",
    data="cifar10",
    data_options={"augment": True},
    model="resnet32",
    search_space={
        "lr": LogUniform(1e-2, 0.5),
        "threshold": LogUniform(1e-4, 1e-2),
        "batch_size": Choice([64, 100, 128, 256]),
    },
    defaults={
        "lr": 0.1,
        "threshold": 1e-3,
        "batch_size": 100,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "optimizer": "sgd",
    },
    # the velocity itself, as searched above (the relative default is unmeasured here)
    threshold_mode="absolute",
    max_epochs=250,
    lr_signal="velocity_change",
    lr_factor=0.5,
    lr_patience=10,
    resources={"cpu": 2, "gpu": 0.5},
)
