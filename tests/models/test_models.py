import pytest
import torch

from fda.models import MODEL_NAMES, TORCHVISION_MODELS, ModelError, build_model, count_params, torchvision_available

NEEDS_TV = pytest.mark.skipif(not torchvision_available(), reason="torchvision is not installed (or does not import with this torch)")


def test_lenet5_exact_params():
    m = build_model("lenet5", (1, 28, 28), 10)
    assert count_params(m) == 61_706
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_vgg16star_exact_params():
    m = build_model("vgg16star", (1, 28, 28), 10)
    assert count_params(m) == 2_592_202
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["lenet5", "mlp", "vgg16star"])
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_forward_shapes(name, shape, classes):
    m = build_model(name, shape, classes)
    out = m(torch.randn(4, *shape))
    assert out.shape == (4, classes) and torch.isfinite(out).all()


def test_mlp_small():
    assert count_params(build_model("mlp", (1, 28, 28), 10)) == 784 * 200 + 200 + 200 * 10 + 10


@pytest.mark.parametrize("name", ["lenet5", "mlp", "vgg16star"])
def test_deterministic_init(name):
    torch.manual_seed(3)
    a = build_model(name, (1, 28, 28), 10)
    torch.manual_seed(3)
    b = build_model(name, (1, 28, 28), 10)
    torch.manual_seed(4)
    c = build_model(name, (1, 28, 28), 10)
    pa, pb, pc = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_count_params_trainable_only():
    m = build_model("lenet5", (1, 28, 28), 10)
    for p in m.features.parameters():
        p.requires_grad_(False)
    assert count_params(m) == 61_706 - (6 * 25 + 6) - (16 * 6 * 25 + 16)


def test_unknown_and_bad_args():
    with pytest.raises(ModelError) as ei:
        build_model("resnet50", (1, 28, 28), 10)
    for n in MODEL_NAMES:
        assert n in str(ei.value)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(ModelError, match="at least"):
        build_model("lenet5", (1, 8, 8), 10)
    with pytest.raises(ModelError, match=r"\(C, H, W\)"):
        build_model("mlp", (28, 28), 10)
    assert count_params(build_model("LeNet-5", (1, 28, 28), 10)) == 61_706  # aliases


@pytest.mark.skipif(torchvision_available(), reason="torchvision is installed: the missing-torchvision error cannot occur")
@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_missing_torchvision_error(name):
    with pytest.raises(ModelError, match=rf"model '{name}' needs torchvision.*lenet5 / mlp / vgg16star"):
        build_model(name, (3, 32, 32), 10)


def test_missing_torchvision_error_simulated(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "torchvision" or name.startswith("torchvision."):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert not torchvision_available()
    with pytest.raises(ModelError, match="needs torchvision"):
        build_model("densenet121", (3, 32, 32), 10)


@NEEDS_TV
@pytest.mark.parametrize(
    "name,shape,classes,params",
    [
        ("densenet121", (3, 32, 32), 10, 6_964_106),
        ("densenet201", (3, 32, 32), 10, 18_112_138),
        ("convnext_large", (3, 32, 32), 100, 197_068_580),
    ],
)
@pytest.mark.slow
def test_torchvision_param_counts(name, shape, classes, params):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build_model(name, shape, classes, weights=False)
    assert count_params(m) == params
    m.eval()
    with torch.no_grad():
        assert m(torch.zeros(2, *shape)).shape == (2, classes)


@NEEDS_TV
def test_convnext_warns_without_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="randomly initialised"):
        build_model("convnext_large", (3, 32, 32), 100)


@NEEDS_TV
def test_torchvision_small_input_rejected():
    with pytest.raises(ModelError, match="at least 32x32"):
        build_model("densenet121", (1, 28, 28), 10)


def test_charlm_params_shape_and_causality():
    vocab, window = 75, 80
    m = build_model("charlm", (window,), vocab)
    lstm = 4 * 64 * (8 + 64) + 2 * 4 * 64 + 4 * 64 * (64 + 64) + 2 * 4 * 64  # two layers, two bias vectors each
    assert count_params(m) == vocab * 8 + lstm + 64 * vocab + vocab == 57_699
    x = torch.randint(0, vocab, (3, window))
    out = m(x)
    assert out.shape == (3, vocab, window)  # logits per position, cross-entropy's layout
    y = x.clone()
    y[:, 40:] = (y[:, 40:] + 1) % vocab  # change the future of position 39
    with torch.no_grad():
        assert torch.allclose(m(y)[:, :, :40], out[:, :, :40], atol=1e-6)
        assert not torch.allclose(m(y)[:, :, 40:], out[:, :, 40:], atol=1e-6)


def test_charlm_and_image_models_refuse_the_other_kind_of_data():
    with pytest.raises(ModelError, match="model=charlm with dataset=shakespeare"):
        build_model("lenet5", (80,), 75)
    with pytest.raises(ModelError, match="does not fit an image dataset"):
        build_model("charlm", (1, 28, 28), 10)
