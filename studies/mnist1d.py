"""MNIST-1D (Greydanus 2020; 4,000 train / 1,000 test 40-sample signals, generated
offline) with a small 1-D CNN: a second modality beside digits, a full search in minutes
on 2 CPU cores."""

from neve_tune import Choice, LogUniform, Study

STUDY = Study(
    name="mnist1d",
    data="mnist1d",
    model="small_cnn1d",
    search_space={
        "lr": LogUniform(1e-3, 0.5),
        "threshold": LogUniform(1e-3, 1e-1),  # V / peak V (threshold_mode="relative", the default)
        "batch_size": Choice([32, 64, 128]),
    },
    max_epochs=60,
)
