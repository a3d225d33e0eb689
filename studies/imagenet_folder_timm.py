"""An ImageNet-style folder with a timm model, for GPU users.

Data: ``$NEVE_DATA/train/<class>/*.jpg`` and ``$NEVE_DATA/val/<class>/*.jpg``
(torchvision ``ImageFolder``; ``--data-root`` to point elsewhere), random-resized crops
of 224 pixels. Model: timm's ``resnet18`` from scratch (no pretrained weights; any
``timm:<name>`` works). The val/ folder is the test set: it is evaluated once per trial,
after training, and never used for a decision. One GPU per trial, bf16 autocast.

    neve-tune optuna worker studies/imagenet_folder_timm.py --storage postgresql://... --trials 10
"""

from neve_tune import Choice, LogUniform, Study

STUDY = Study(
    name="imagenet_folder_timm",
    data="imagefolder",
    data_options={"image_size": 224, "train_dir": "train", "test_dir": "val", "augment": True},
    model="timm:resnet18",
    search_space={
        "lr": LogUniform(2e-2, 1.0),
        "threshold": LogUniform(1e-4, 1e-2),
        "batch_size": Choice([128, 256]),
    },
    defaults={
        "lr": 0.1,
        "threshold": 1e-3,
        "batch_size": 256,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "optimizer": "sgd",
    },
    # the velocity itself, as searched above (the relative default is unmeasured here)
    threshold_mode="absolute",
    max_epochs=90,
    lr_patience=5,
    amp="bf16",
    resources={"cpu": 8, "gpu": 1},
)
