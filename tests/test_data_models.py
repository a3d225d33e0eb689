import pickle
import re

import numpy as np
import pytest
import torch

from neve_tune import NeuralVelocity, gaussian_probe
from neve_tune.data import dataset_labels, get_dataset, validation_split
from neve_tune.models import create_model
from neve_tune.probe import dataset_probe
from neve_tune.velocity import select_layers


def _write_cifar(root, name):
    """The python version of CIFAR: pickled dicts (protocol 2, str keys as the py2 originals
    load)."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta_file, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files = ["train", "test"]
        meta_file, meta = "meta", {"fine_label_names": [f"c{i}" for i in range(100)]}
    folder.mkdir(parents=True)
    for f in files:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), label_key: [0, 1, 2, 3]}
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / meta_file, "wb") as fh:
        pickle.dump(meta, fh, protocol=2)


@pytest.mark.parametrize("name,train_n", [("cifar10", 20), ("cifar100", 4)])
def test_cifar_loaders_read_the_real_format(tmp_path, name, train_n):
    _write_cifar(tmp_path, name)
    with pytest.raises(FileNotFoundError, match="put the python version"):
        get_dataset(name, data_root=tmp_path)  # md5 of the official archive does not match
    bundle = get_dataset(name, data_root=tmp_path, verify=False)
    assert len(bundle.train) == train_n and len(bundle.test) == 4
    x, y = bundle.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    assert bundle.num_classes == (10 if name == "cifar10" else 100)


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"cifar10 was not found under data_root=.*cifar-10-batches-py"
    ):
        get_dataset("cifar10", data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        get_dataset("imagefolder", data_root=tmp_path)
    with pytest.raises(ValueError, match="data must be one of"):
        get_dataset("mnist")


def test_imagefolder_reads_a_tree_of_images(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    bundle = get_dataset("imagefolder", data_root=tmp_path, image_size=16)
    assert len(bundle.train) == 4 and bundle.num_classes == 2 and bundle.input_shape == (3, 16, 16)
    assert bundle.test[0][0].shape == (3, 16, 16)


def test_digits_split_is_fixed_by_seed_and_validation_split_holds_out_ten_percent():
    a, b, c = (
        get_dataset("digits", seed=0),
        get_dataset("digits", seed=0),
        get_dataset("digits", seed=1),
    )
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    tr, va = validation_split(a.train, 0.1, seed=0)
    assert len(va) == 144 and len(tr) + len(va) == 1437 and not set(tr.indices) & set(va.indices)
    probe = dataset_probe(a.train, 100, seed=0)
    assert probe.shape == (100, 1, 8, 8)


def test_resnet32_has_the_papers_63_monitored_layers():
    model = create_model("resnet32", 10, (3, 32, 32))
    layers = select_layers(model)
    kinds = [type(m).__name__ for m in layers.values()]
    assert len(layers) == 63 and kinds.count("Conv2d") == 31 and kinds.count("BatchNorm2d") == 31
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert create_model("resnet20", 100, (3, 32, 32))(torch.zeros(1, 3, 32, 32)).shape == (1, 100)


@pytest.mark.parametrize(
    "name", ["timm:resnet18", "torchvision:resnet18", "timm:vit_tiny_patch16_224"]
)
def test_models_by_name_without_pretrained_weights(name):
    model = create_model(name, num_classes=7, input_shape=(3, 32, 32))
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 7)
    nv = NeuralVelocity(model, gaussian_probe((3, 32, 32), 4))
    nv.measure()
    assert nv.num_neurons > 0


def test_unknown_model_names_are_refused():
    with pytest.raises(ValueError, match="model must be one of"):
        create_model("lenet", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="timm has no architecture"):
        create_model("timm:not_a_model", 10, (3, 32, 32))


def test_mnist1d_is_generated_offline_fixed_by_seed_and_leaves_global_rngs_alone(
    tmp_path, monkeypatch
):
    import random
    import socket

    from neve_tune.data import _mnist1d_pool

    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)  # the package's own get_dataset would write a pickle here
    import sklearn.model_selection  # noqa: F401  (its first import draws from Python's generator)

    _mnist1d_pool.cache_clear()
    np.random.seed(7)
    random.seed(7)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    a = get_dataset("mnist1d", seed=0)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert list(tmp_path.iterdir()) == []

    assert a.name == "mnist1d" and a.input_shape == (1, 40) and a.num_classes == 10
    x, y = a.train.tensors
    assert (
        x.shape == (4000, 1, 40)
        and x.dtype == torch.float32
        and a.test.tensors[0].shape == (1000, 1, 40)
    )
    # stratified: the 500 examples of each class split 400 / 100
    assert (
        torch.bincount(y).tolist() == [400] * 10
        and torch.bincount(a.test.tensors[1]).tolist() == [100] * 10
    )
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-4
    b, c = get_dataset("mnist1d", seed=0), get_dataset("mnist1d", seed=1)
    assert torch.equal(x, b.train.tensors[0]) and torch.equal(y, b.train.tensors[1])
    assert not torch.equal(x, c.train.tensors[0])
    with pytest.raises(ValueError, match="test_fraction must be"):
        get_dataset("mnist1d", test_fraction=1.0)


def test_mnist1d_takes_the_data_changes():
    clean = get_dataset("mnist1d", seed=2)
    small = get_dataset("mnist1d", seed=2, train_fraction=0.25)
    assert (
        len(small.train) == 1000
        and torch.bincount(dataset_labels(small.train)).tolist() == [100] * 10
    )
    noisy = get_dataset("mnist1d", seed=2, label_noise=0.2, noise_seed=3)
    changed = torch.nonzero(dataset_labels(noisy.train) != clean.train.tensors[1]).flatten()
    assert len(changed) == 800 and torch.equal(changed, noisy.flipped)
    assert torch.equal(noisy.test.tensors[1], clean.test.tensors[1])


def test_small_cnn1d_forwards_and_velocity_monitors_its_layers():
    model = create_model("small_cnn1d", 10, (1, 40))
    assert model(torch.zeros(3, 1, 40)).shape == (3, 10)
    kinds = [type(m).__name__ for m in select_layers(model).values()]
    assert (
        kinds.count("Conv1d") == 3
        and kinds.count("BatchNorm1d") == 3
        and kinds.count("Linear") == 1
    )
    assert create_model("small_cnn1d", 4, (2, 33))(torch.zeros(1, 2, 33)).shape == (1, 4)
    with pytest.raises(ValueError, match="input_shape must be"):
        create_model("small_cnn1d", 10, (1, 8, 8))


def test_mnist1d_study_trains_through_the_cli(tmp_path):
    import json

    from neve_tune import load_study
    from neve_tune.cli import main
    from neve_tune.study import bundled_studies

    assert "mnist1d" in bundled_studies()
    study = load_study("mnist1d")
    assert (study.data, study.model) == ("mnist1d", "small_cnn1d")
    out = tmp_path / "run.json"
    args = [
        "train",
        "mnist1d",
        "--max-epochs",
        "2",
        "--train-fraction",
        "0.25",
        "--label-noise",
        "0.2",
    ]
    assert main([*args, "--device", "cpu", "--json", str(out), "--quiet"]) == 0
    rec = json.loads(out.read_text())
    assert rec["epochs"] == 2 and rec["history"][0]["train_samples"] == 1000
    assert rec["history"][-1]["train_acc"] > 0.2 and 0.0 <= rec["test_acc"] <= 1.0


@pytest.mark.parametrize(
    "name, shape, expected",
    [("small_cnn", (1, 40), "(channels, height, width)"), ("small_cnn1d", (1, 8, 8), "length")],
)
def test_a_cnn_given_another_inputs_shape_names_input_shape(name, shape, expected):
    """``neve-tune train mnist1d --model small_cnn``: one line naming the shape it needs,
    not the tuple unpacking's own error."""
    with pytest.raises(ValueError, match="input_shape must be .*" + re.escape(expected)):
        create_model(name, 10, shape)
