import pickle

import numpy as np
import pytest
import torch

from neve_tune import NeuralVelocity, gaussian_probe
from neve_tune.data import get_dataset, validation_split
from neve_tune.models import create_model
from neve_tune.probe import dataset_probe
from neve_tune.velocity import select_layers


def _write_cifar(root, name):
    """The python version of CIFAR: pickled dicts (protocol 2, str keys as the py2 originals load)."""
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
    with pytest.raises(FileNotFoundError, match=r"cifar10 was not found under data_root=.*cifar-10-batches-py"):
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
    a, b, c = get_dataset("digits", seed=0), get_dataset("digits", seed=0), get_dataset("digits", seed=1)
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


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18", "timm:vit_tiny_patch16_224"])
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
