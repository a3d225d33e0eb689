"""The data and model doors refuse what users get wrong, by name, before any training: a
misspelled or mistyped data option, a model that cannot take the data or gives another
number of outputs than it has classes, and own data whose labels are not class ids."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from neve_tune import Study, load_study, run_trial
from neve_tune.cli import main
from neve_tune.compare import compare, compare_searches
from neve_tune.data import DataBundle, file_datasets, get_dataset, reads_files
from neve_tune.models import create_model

SMALL = dict(data="synthetic", max_epochs=1, selection_subset=0, selection="objective")


@pytest.mark.parametrize(
    "name, options, error, message",
    [
        ("digits", {"label_nosie": 0.2}, ValueError, "unknown key 'label_nosie' for data 'digits'"),
        ("synthetic", {"num_clases": 3}, ValueError, "unknown key 'num_clases'"),
        ("digits", {"seed": "1"}, TypeError, "seed must be an int in [0, 4294967295], got '1'"),
        ("digits", {"seed": 1.7}, TypeError, "seed must be an int"),
        ("digits", {"seed": -1}, ValueError, "seed must be an int in [0, 4294967295], got -1"),
        ("digits", {"test_fraction": 0}, ValueError, "test_fraction must be a finite number > 0"),
        ("digits", {"test_fraction": 1.5}, ValueError, "test_fraction must be"),
        ("digits", {"test_fraction": "0.2"}, TypeError, "test_fraction must be"),
        ("mnist1d", {"seed": "0"}, TypeError, "seed must be an int"),
        ("synthetic", {"num_classes": 1}, ValueError, "num_classes must be an int >= 2, got 1"),
        ("synthetic", {"num_classes": "3"}, TypeError, "num_classes must be an int >= 2"),
        ("synthetic", {"num_train": 0}, ValueError, "num_train must be an int >= 1, got 0"),
        ("synthetic", {"num_test": -1}, ValueError, "num_test must be an int >= 1"),
        ("synthetic", {"noise": -1.0}, ValueError, "noise must be a finite number >= 0"),
        ("synthetic", {"input_shape": 4}, TypeError, "input_shape must be a tuple of positive"),
        ("synthetic", {"input_shape": (1, 0)}, ValueError, "input_shape[1] must be an int >= 1"),
    ],
)
def test_get_dataset_refuses_a_bad_option_by_name(name, options, error, message):
    """Before, a misspelled option fell into the loader's ``**_`` unread, a string or
    fractional seed was read as another split and the others failed in the library below."""
    with pytest.raises(error) as caught:
        get_dataset(name, **options)
    assert message in str(caught.value)


def test_numpy_and_tensor_scalars_still_load_the_same_data():
    a = get_dataset("synthetic", seed=np.int64(3), num_classes=np.int64(3), noise=np.float32(1))
    b = get_dataset("synthetic", seed=3, num_classes=3, noise=1.0)
    assert a.num_classes == 3 and type(a.num_classes) is int
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    c = get_dataset("digits", seed=torch.tensor(1), test_fraction=np.float64(0.2))
    assert torch.equal(c.train.tensors[0], get_dataset("digits", seed=1).train.tensors[0])


def test_a_study_refuses_a_split_seed_that_is_not_an_int():
    with pytest.raises(TypeError, match=r"data_options\['seed'\] must be an int"):
        Study(name="x", data="digits", data_options={"seed": "3"})


@pytest.mark.parametrize("change", [{"label_noise": 0.2}, {"train_fraction": 0.5}])
def test_the_data_changes_refuse_labels_that_are_not_class_ids(change, monkeypatch):
    """A registered data set's float labels were truncated (1.5 -> 1) in silence."""
    from neve_tune.data import DATASETS

    x, y = torch.randn(20, 3), (torch.arange(20) % 4).float() + 0.5
    bundle = DataBundle("floats", TensorDataset(x, y), TensorDataset(x, y), (3,), 4)
    monkeypatch.setitem(DATASETS, "floats", lambda seed=0: bundle)
    with pytest.raises(TypeError, match="labels must be integer class ids, got a torch.float32"):
        get_dataset("floats", **change)


def test_label_noise_refuses_labels_beyond_num_classes(monkeypatch):
    """A data set registered with num_classes=5 over labels 0..9: a flip computed modulo 5
    turned a 7 into a class below 5, in silence."""
    from neve_tune.data import DATASETS

    x, y = torch.randn(20, 3), torch.arange(20) % 10
    bundle = DataBundle("wrong", TensorDataset(x, y), TensorDataset(x, y), (3,), 5)
    monkeypatch.setitem(DATASETS, "wrong", lambda seed=0: bundle)
    with pytest.raises(ValueError, match="num_classes=5, but the data set has label 5"):
        get_dataset("wrong", label_noise=0.2)


def _write_cifar10(root) -> None:
    """The python version of CIFAR-10 (pickled batches), four images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh, protocol=2)


def test_cifar_flags_must_be_bools(tmp_path):
    """``augment="False"`` was true: the crops and flips it meant to turn off stayed on."""
    _write_cifar10(tmp_path)
    with pytest.raises(TypeError, match="augment must be a bool, got 'False'"):
        get_dataset("cifar10", data_root=tmp_path, verify=False, augment="False")
    with pytest.raises(TypeError, match="verify must be a bool, got 'False'"):
        get_dataset("cifar10", data_root=tmp_path, verify="False")
    plain = get_dataset("cifar10", data_root=tmp_path, verify=False, augment=False)
    assert torch.equal(plain.train[0][0], plain.train[0][0])  # no random crop any more


def test_cifar_files_that_fail_the_md5_check_are_not_called_missing(tmp_path):
    """They were reported "not found under data_root", with the files right there."""
    _write_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError) as caught:
        get_dataset("cifar10", data_root=tmp_path)
    assert "cifar-10-batches-py/ is incomplete or not the official files" in str(caught.value)
    assert "verify=False" in str(caught.value) and "not found" not in str(caught.value)


def _image_tree(root, classes) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / split / c / "0.png")


def test_imagefolder_refuses_bad_options_and_a_single_class(tmp_path):
    _image_tree(tmp_path / "two", ("cat", "dog"))
    with pytest.raises(TypeError, match="augment must be a bool, got 'no'"):
        get_dataset("imagefolder", data_root=tmp_path / "two", augment="no")
    with pytest.raises(TypeError, match="image_size must be an int >= 1, got '8'"):
        get_dataset("imagefolder", data_root=tmp_path / "two", image_size="8")
    assert get_dataset("imagefolder", data_root=tmp_path / "two", image_size=8).num_classes == 2
    _image_tree(tmp_path / "one", ("cat",))
    with pytest.raises(ValueError, match="holds 1 class folder"):
        get_dataset("imagefolder", data_root=tmp_path / "one", image_size=8)


@pytest.mark.parametrize(
    "name, num_classes, shape, options, error, message",
    [
        ("timm:resnet18", 0, (3, 32, 32), {}, ValueError, "num_classes must be an int >= 2"),
        ("small_cnn", 1, (1, 8, 8), {}, ValueError, "num_classes must be an int >= 2, got 1"),
        ("small_cnn", "10", (1, 8, 8), {}, TypeError, "num_classes must be an int >= 2"),
        ("small_cnn", 10, (1, 8, 8), {"width": "8"}, TypeError, "width must be an int >= 1"),
        ("small_cnn", 10, (1, 8, 8), {"width": 0}, ValueError, "width must be an int >= 1"),
        ("small_cnn", 10, (1, 1, 1), {}, ValueError, "at least 2x2"),
        ("small_cnn1d", 10, (1, 0), {}, ValueError, "input_shape[1] must be an int >= 1"),
        ("resnet20", 10, (1, 40), {}, ValueError, "(channels, height, width) for a CIFAR ResNet"),
        (3, 10, (1, 8, 8), {}, ValueError, "model must be one of"),
    ],
)
def test_create_model_refuses_bad_arguments_by_name(
    name, num_classes, shape, options, error, message
):
    with pytest.raises(error) as caught:
        create_model(name, num_classes, shape, **options)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "model, key",
    [
        ("timm:resnet18", "pretrained"),
        ("timm:resnet18", "in_chans"),
        ("torchvision:resnet18", "weights"),
    ],
)
def test_a_study_refuses_model_options_that_create_model_sets(model, key):
    """They failed in the first trial, as a second value for the same argument."""
    with pytest.raises(ValueError, match=f"model_options has '{key}', which create_model sets"):
        Study(name="x", model=model, model_options={key: "DEFAULT"})


@pytest.mark.parametrize(
    "model, options",
    [("timm:fastvit_t8", {}), ("timm:vit_tiny_patch16_224", {"img_size": 16, "depth": 1})],
)
def test_timm_models_named_like_a_vit_build_with_or_without_an_image_size(model, options):
    """FastViT's builder takes no img_size (refused with a TypeError, though a valid model);
    an img_size of the study's own was a second value for the same argument."""
    net = create_model(model, 3, (3, 16, 16), **options).eval()
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


def _mlp(outputs: int, inputs: int = 64):
    return lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(inputs, outputs))


@pytest.mark.parametrize("method", ["neve", "asha"])
@pytest.mark.parametrize("outputs", [3, 5])
def test_run_trial_refuses_a_model_with_another_number_of_outputs(method, outputs):
    """Synthetic data has 4 classes: 5 outputs trained silently; 3 failed in the first
    batch (for the baselines, which have no probe, after their validation split)."""
    epochs: list[Any] = []
    with pytest.raises(ValueError, match=f"gives {outputs} outputs per example, but data "):
        run_trial(
            load_study("digits").replace(**SMALL),
            {},
            method=method,
            model_fn=_mlp(outputs),
            on_epoch=epochs.append,
        )
    assert epochs == []


def test_run_trial_refuses_a_model_that_cannot_take_the_inputs():
    """A torchvision ResNet wants 3 channels: the baselines failed in their first batch."""
    study = load_study("digits").replace(model="torchvision:resnet18", **SMALL)
    with pytest.raises(ValueError, match="model 'torchvision:resnet18' cannot take the inputs of"):
        run_trial(study, {}, method="asha")


def test_the_check_leaves_the_random_streams_and_the_model_as_they_were():
    from neve_tune._model_fit import check_model_fits

    data = TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))
    state = torch.get_rng_state()
    check_model_fits(model, data, 2)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    with pytest.raises(ValueError, match="for a batch of 2 it returned shape"):
        check_model_fits(torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0)), data, 2)
    with pytest.raises(TypeError, match="must return a logits tensor"):
        check_model_fits(_Dict(), data, 2)


class _Dict(torch.nn.Module):
    """A model returning a dict (as a Hugging Face model returns its output object)."""

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": x[:, :2]}


def test_train_cli_names_the_model_that_cannot_take_the_data(capsys):
    args = ["train", "digits", "--data", "synthetic", "--model", "torchvision:resnet18"]
    assert main([*args, "--max-epochs", "1", "--device", "cpu", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cannot take the inputs of data 'synthetic'" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("verb", ["train", "compare"])
def test_data_root_for_data_that_is_not_read_from_files_is_refused(verb, capsys, tmp_path):
    """``neve-tune train digits --data-root /data`` (a forgotten ``--data cifar10``) trained
    on digits as if the folder had been read."""
    assert main([verb, "digits", "--data-root", str(tmp_path), "--max-epochs", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--data-root: data 'digits' is not read from files" in err


@pytest.fixture
def no_search(monkeypatch):
    """Fails a test whose bad input reached a search."""

    def search_fn(backend):
        raise AssertionError("a search started")

    monkeypatch.setattr("neve_tune.compare._api._search_fn", search_fn)


def test_compare_refuses_a_model_fn_that_does_not_fit_the_study_data(no_search):
    with pytest.raises(ValueError, match="model_fn's model gives 3 outputs per example"):
        compare(load_study("digits").replace(**SMALL), trials=1, model_fn=_mlp(3))


def _sets(y_train: Any, y_test: Any = None, x_test: Any = None):
    x = torch.randn(len(y_train), 4)
    y_test = y_train[:6] if y_test is None else y_test
    x_test = x[: len(y_test)] if x_test is None else x_test
    return TensorDataset(x, y_train), TensorDataset(x_test, y_test)


Y = torch.arange(12) % 3


class _Items(torch.utils.data.Dataset):
    """(input, label) items as a user's own dataset gives them."""

    def __init__(self, labels: list) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple:
        return np.zeros(4, np.float32), self.labels[i]


@pytest.mark.parametrize(
    "sets, num_classes, outputs, error, message",
    [
        (_sets(Y), 2, 3, ValueError, "num_classes=2, but train_set has label 2"),
        (_sets(Y), None, 5, ValueError, "gives 5 outputs per example, but data 'user' has "),
        (_sets(Y + 1), None, 3, ValueError, "has num_classes=4"),
        (_sets(Y - 1), None, 3, ValueError, "train_set has label -1"),
        (_sets(Y, Y[:6] + 3), None, 3, ValueError, "num_classes=3, but test_set has label 3"),
        (_sets(Y.float() + 0.5), None, 3, TypeError, "labels must be integer class ids"),
        (_sets(torch.nn.functional.one_hot(Y)), None, 3, ValueError, "one class id per example"),
        (_sets(Y), "3", 3, TypeError, "num_classes must be an int >= 2"),
        (_sets(Y * 0), None, 3, ValueError, "train_set holds one class"),
        (_sets(Y[:0]), None, 3, ValueError, "train_set is empty"),
        (_sets(Y, Y[:0]), None, 3, ValueError, "test_set is empty"),
        (_sets(Y, x_test=torch.zeros(6, 5)), None, 3, ValueError, "test_set's inputs have shape"),
        ((_Items([np.array([1])] * 4), _sets(Y)[1]), 3, 3, ValueError, "got shape (1,)"),
        ((_Items([0, 1.5, 2]), _sets(Y)[1]), None, 3, TypeError, "got 1.5 at 1"),
    ],
)
def test_compare_searches_refuses_bad_data_before_any_search(
    sets, num_classes, outputs, error, message, no_search
):
    with pytest.raises(error) as caught:
        compare_searches(*sets, _mlp(outputs, 4), trials=1, max_epochs=1, num_classes=num_classes)
    assert message in str(caught.value)


def test_compare_searches_takes_numpy_labels_and_more_classes_than_seen(no_search):
    """Labels as NumPy ints are class ids; num_classes above the labels is allowed (a class
    absent from the training set) when the model has that many outputs."""
    items = _Items([np.int64(i % 3) for i in range(12)])
    with pytest.raises(AssertionError, match="a search started"):  # checks passed
        compare_searches(items, items, _mlp(5, 4), trials=1, max_epochs=1, num_classes=5)


@pytest.mark.parametrize("split", ["train", "test"])
def test_compare_refuses_a_bundle_whose_labels_exceed_its_num_classes(split, no_search):
    """A test label out of range failed only once every search had run."""
    x = torch.randn(12, 4)
    good, bad = TensorDataset(x, Y), TensorDataset(x, Y + 2)
    sets = (bad, good) if split == "train" else (good, bad)
    bundle = DataBundle("own", *sets, (4,), 3)
    with pytest.raises(ValueError, match=f"data.num_classes=3, but data.{split} has label 3"):
        compare(load_study("digits").replace(**SMALL), trials=1, data=bundle, model_fn=_mlp(3, 4))


def test_the_library_refuses_data_root_for_data_not_read_from_files(tmp_path):
    """The command line refused ``--data-root digits``; the library read it in silence."""
    with pytest.raises(ValueError, match=r"data_options\['data_root'\]: data 'digits' is not read"):
        get_dataset("digits", data_root=tmp_path)
    with pytest.raises(ValueError, match=r"data 'mnist1d' is not read from files"):
        load_study("mnist1d").replace(data_options={"data_root": str(tmp_path)})
    assert reads_files("cifar10") and not reads_files("synthetic")
    assert {"cifar10", "cifar100", "imagefolder"} <= set(file_datasets())
    assert not {"digits", "mnist1d", "synthetic"} & set(file_datasets())


@pytest.mark.parametrize(
    ("data", "options", "error", "message"),
    [
        ("digits", {"test_fraction": 1.5}, ValueError, r"data_options\['test_fraction'\] must be"),
        ("mnist1d", {"num_samples": "3000"}, TypeError, r"data_options\['num_samples'\] must be"),
        ("synthetic", {"num_classes": 1}, ValueError, r"data_options\['num_classes'\] must be"),
        ("cifar10", {"augment": "False"}, TypeError, r"data_options\['augment'\] must be"),
        ("imagefolder", {"image_size": 0}, ValueError, r"data_options\['image_size'\] must be"),
    ],
)
def test_a_study_refuses_a_bad_loader_option_when_it_is_built(data, options, error, message):
    """They were refused only when the first trial loaded the data (on every worker)."""
    with pytest.raises(error, match=message):
        Study(name="x", data=data, data_options=options)


def test_good_loader_options_pass_and_the_loader_checks_them_alike():
    study = Study(
        name="x", data="mnist1d", data_options={"num_samples": 3000, "test_fraction": 0.25}
    )
    assert study.data_options["num_samples"] == 3000
    with pytest.raises(ValueError, match="num_train must be an int >= 1"):
        get_dataset("synthetic", num_train=0)  # the loader's own check, the same rule


def test_a_users_own_loader_keeps_its_own_option_values(tmp_path):
    """The bundled loaders' value checks are theirs: a loader of your own with an option of
    the same name (``noise="gaussian"``) checks it itself."""
    from neve_tune.data import DATASETS, register_dataset

    @register_dataset("own_blobs")
    def own_blobs(seed: int = 0, noise: str = "gaussian", **_: object) -> DataBundle:
        return get_dataset("synthetic", seed=seed)

    try:
        study = Study(name="x", data="own_blobs", data_options={"noise": "uniform"})
        assert study.data_options == {"noise": "uniform"}
    finally:
        del DATASETS["own_blobs"]
    assert load_study("digits").replace(data_options={"data_root": None}).data == "digits"
