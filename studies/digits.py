"""Digits (scikit-learn, 1,437 train / 360 test 8x8 images) with a small CNN: the
offline default, a full search in minutes on 2 CPU cores."""

from neve_tune import Choice, LogUniform, Study

STUDY = Study(
    name="digits",
    data="digits",
    model="small_cnn",
    search_space={
        "lr": LogUniform(1e-3, 0.5),
        "threshold": LogUniform(1e-3, 1e-1),  # V / peak V (threshold_mode="relative", the default)
        "batch_size": Choice([32, 64, 128]),
    },
    max_epochs=60,
)
