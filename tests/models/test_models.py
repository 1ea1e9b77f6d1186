"""Backbones (chanloss.models): the model contract, options, FeatureTap and the adapters."""

import gc
import sys
import types
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chanloss.models import MODELS, FeatureTap, ModelOutput, create_model
from chanloss.models.resnet import ShortcutA

# name, options (small widths), input (C, H, W), expected features (C, H, W)
CASES = [
    ("resnet20", {"width": 0.5}, (3, 32, 32), (32, 8, 8)),
    ("resnet20", {"width": 0.5, "shortcut": "B"}, (3, 32, 32), (32, 8, 8)),
    ("resnet56", {"width": 0.25}, (3, 32, 32), (16, 8, 8)),
    ("resnet110", {"width": 0.25}, (3, 32, 32), (16, 8, 8)),
    ("vgg16_bn", {"width": 0.125}, (3, 32, 32), (64, 2, 2)),
    ("resnet18", {"width": 0.125}, (3, 64, 64), (64, 2, 2)),
    ("resnet18", {"width": 0.125, "small_input": True}, (3, 32, 32), (64, 4, 4)),
    ("resnet18", {"width": 0.125, "layer4_stride": 1, "head": "mcloss"}, (3, 64, 64), (64, 4, 4)),
    ("resnet50", {"width": 0.125}, (3, 64, 64), (256, 2, 2)),
    ("convnet_small", {"width": 8, "feature_channels": 12}, (1, 8, 8), (12, 4, 4)),
    ("convnet_small", {"width": 8, "pools": 2}, (1, 8, 8), (64, 2, 2)),
    ("convnet_small", {"width": 8}, (1, 28, 28), (64, 14, 14)),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in opts.items())}" for name, opts, _, _ in CASES]


def _build(name, opts, shape, num_classes=5, seed=0):
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, in_channels=shape[0], **opts)
    return model, torch.rand(3, *shape)


def test_registry_lists_every_backbone():
    assert set(MODELS) == {
        "resnet20",
        "resnet56",
        "resnet110",
        "resnet18",
        "resnet50",
        "vgg16_bn",
        "convnet_small",
    }
    assert {name for name, *_ in CASES} == set(MODELS)


@pytest.mark.parametrize(("name", "opts", "shape", "expected"), CASES, ids=IDS)
def test_output_contract(name, opts, shape, expected):
    model, x = _build(name, opts, shape)
    model.eval()
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.features.shape == (3, *expected)
    assert model.num_features == expected[0]
    assert out.embedding.shape == (3, model.embedding_dim)
    assert out.logits.shape == (3, 5) and model.num_classes == 5
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (
        model.embedding_dim,
        5,
    )
    assert out.features.min() >= 0  # the map after its final ReLU
    torch.testing.assert_close(out.logits, model.classifier(out.embedding))
    if opts.get("head", "gap") == "gap":
        torch.testing.assert_close(out.embedding, out.features.mean(dim=(2, 3)))
        assert model.embedding_dim == expected[0]
    # timm-style API agrees with forward
    features = model.forward_features(x)
    torch.testing.assert_close(features, out.features)
    torch.testing.assert_close(model.forward_head(features), out.logits)
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), out.embedding)


@pytest.mark.parametrize(("name", "opts", "shape", "expected"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, opts, shape, expected):
    model, x = _build(name, opts, shape)
    out = model(x)
    (out.logits.square().sum() + out.features.mean() + out.embedding.sum()).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "opts", "shape", "expected"), CASES, ids=IDS)
def test_channels_last_input_gives_the_same_output(name, opts, shape, expected):
    model, x = _build(name, opts, shape)
    model, x = model.double().eval(), x.double()
    with torch.no_grad():
        ref = model(x)
        out = model(x.contiguous(memory_format=torch.channels_last))
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    for a, b, c in zip(ref, out, out_cl, strict=True):
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(c, a)


@pytest.mark.parametrize(
    ("name", "opts", "total"),
    [
        # torchvision's published counts for 1000 classes (conv layers without bias)
        ("resnet18", {}, 11_689_512),
        ("resnet50", {}, 25_557_032),
    ],
)
def test_imagenet_resnets_match_published_parameter_counts(name, opts, total):
    with torch.device("meta"):
        model = create_model(name, num_classes=1000, **opts)
    assert sum(p.numel() for p in model.parameters()) == total


@pytest.mark.parametrize(
    ("name", "millions"), [("resnet20", 0.27), ("resnet56", 0.85), ("resnet110", 1.73)]
)
def test_cifar_resnets_match_he_et_al_parameter_counts(name, millions):
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == model.depth == int(name[6:])  # option A: no projection convs


def test_vgg16_bn_body_has_the_configuration_d_parameter_count():
    with torch.device("meta"):
        model = create_model("vgg16_bn", num_classes=10)
    body = sum(p.numel() for p in model.body.parameters())
    # torchvision vgg16_bn.features holds 14,723,136 parameters, 4,224 of them conv biases
    assert body == 14_723_136 - 4_224
    assert sum(isinstance(m, nn.Conv2d) for m in model.body) == 13


@pytest.mark.parametrize(
    ("name", "opts", "num_classes", "features", "embedding"),
    [
        ("resnet50", {}, 1000, (2048, 7, 7), 2048),
        ("resnet18", {}, 200, (512, 7, 7), 512),
        (
            "resnet18",
            {"layer4_stride": 1, "feature_channels": 600, "head": "mcloss"},
            200,
            (600, 14, 14),
            512,
        ),
        ("vgg16_bn", {"image_size": 224}, 200, (512, 14, 14), 512),
        (
            "vgg16_bn",
            {"image_size": 224, "channels_per_class": 3, "head": "mcloss"},
            200,
            (600, 14, 14),
            512,
        ),
        ("resnet56", {}, 100, (64, 8, 8), 64),
    ],
)
def test_full_size_shapes_on_the_meta_device(name, opts, num_classes, features, embedding):
    size = 32 if name == "resnet56" else 224
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **opts)
        out = model(torch.empty(2, 3, size, size))
    assert out.features.shape == (2, *features)
    assert out.embedding.shape == (2, embedding)
    assert out.logits.shape == (2, num_classes)


def test_vgg16_bn_widened_to_600_channels_for_200_classes():
    torch.manual_seed(0)
    model = create_model("vgg16_bn", num_classes=200, channels_per_class=3, width=0.125)
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert model.body[40] is convs[-1] and convs[-1].out_channels == 600
    assert convs[9].out_channels == 64  # conv4_3 keeps its (scaled) width by default
    assert model.num_features == 600 and model.classifier.in_features == 600
    out = model(torch.rand(2, 3, 32, 32))
    assert out.features.shape == (2, 600, 2, 2) and out.logits.shape == (2, 200)
    authors = create_model(
        "vgg16_bn", num_classes=200, channels_per_class=3, width=0.125, widen_conv4_3=True
    )
    convs = [m for m in authors.body if isinstance(m, nn.Conv2d)]
    assert convs[9].out_channels == 600 and convs[10].in_channels == 600
    same = create_model("vgg16_bn", num_classes=200, feature_channels=600, width=0.125)
    assert same.num_features == 600


def test_vgg16_bn_mcloss_head_is_the_authors_mlp():
    model = create_model(
        "vgg16_bn", num_classes=200, image_size=224, channels_per_class=3, head="mcloss"
    )
    mlp = model.head.mlp
    assert [type(m) for m in mlp] == [nn.BatchNorm1d, nn.Linear, nn.BatchNorm1d, nn.ELU]
    assert mlp[1].in_features == 600 * 7 * 7 and mlp[1].out_features == 512
    features = torch.rand(2, 600, 14, 14)
    model.eval()
    expected = mlp(F.max_pool2d(features, 2).flatten(1))
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), expected)
    with pytest.raises(ValueError, match=r"built for feature maps of size \(14, 14\)"):
        model.forward_head(torch.rand(2, 600, 2, 2))


def test_shortcut_a_subsamples_and_appends_zero_channels():
    x = torch.randn(2, 4, 6, 6)
    out = ShortcutA(4, 7, 2)(x)
    ref = torch.zeros(2, 7, 3, 3)
    for i in range(3):
        for j in range(3):
            ref[:, :4, i, j] = x[:, :, 2 * i, 2 * j]
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="needs out >= in channels, got 8 -> 4"):
        ShortcutA(8, 4, 1)


def test_cifar_resnet_shortcut_b_uses_projections():
    model = create_model("resnet20", num_classes=10, shortcut="B")
    projections = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    assert len(projections) == 2  # at the two stage transitions
    assert not any(isinstance(m, ShortcutA) for m in model.modules())


def test_feature_channels_sets_the_last_stage_width():
    for name, opts in [
        ("resnet20", {"feature_channels": 100}),
        ("resnet50", {"feature_channels": 300, "width": 0.125}),
        ("resnet18", {"feature_channels": 30, "width": 0.125}),
        ("convnet_small", {"feature_channels": 30}),
    ]:
        model = create_model(name, num_classes=10, **opts).eval()
        out = model(torch.rand(1, 3, 64, 64))
        assert out.features.shape[1] == opts["feature_channels"] == model.num_features


def test_wrong_input_channels_is_a_clear_error():
    model = create_model("convnet_small", num_classes=3, in_channels=1)
    with pytest.raises(
        ValueError, match=r"expects input of shape \(B, 1, H, W\), got \(2, 3, 8, 8\)"
    ):
        model(torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize(
    ("name", "opts", "message"),
    [
        ("resnet21", {}, "unknown model 'resnet21'; expected one of 'convnet_small'"),
        ("foo:bar", {}, "unknown model prefix 'foo' in 'foo:bar'; expected one of 'timm:NAME'"),
        ("timm:", {}, "lacks the model after 'timm:'"),
        (
            "resnet20",
            {"depth": 32},
            "model 'resnet20' has no option 'depth'; allowed options: width",
        ),
        ("resnet20", {"shortcut": "C"}, "shortcut must be one of 'A', 'B', got 'C'"),
        ("resnet20", {"width": 0}, r"width must be a finite number in \(0, inf\), got 0.0"),
        ("resnet20", {"feature_channels": 16}, "shortcut 'A' pads channels and needs out >= in"),
        ("resnet18", {"layer4_stride": 3}, "layer4_stride must be one of 1, 2, got 3"),
        ("resnet18", {"small_input": 1}, "small_input must be True or False, got 1"),
        ("resnet50", {"head": "mlp"}, "head must be one of 'gap', 'mcloss', got 'mlp'"),
        ("vgg16_bn", {"image_size": 100}, "image_size must be a multiple of 32"),
        (
            "vgg16_bn",
            {"channels_per_class": 0},
            r"channels_per_class must be in \[1, inf\)",
        ),
        (
            "vgg16_bn",
            {"channels_per_class": 3, "feature_channels": 512},
            r"feature_channels \(512\) contradicts channels_per_class \* num_classes \(3 \* 10 = 30\)",
        ),
        ("convnet_small", {"pools": 3}, r"pools must be in \[0, 2\], got 3"),
    ],
)
def test_create_model_rejects_bad_names_and_options(name, opts, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, num_classes=10, **opts)


def test_create_model_rejects_bad_class_and_channel_counts():
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, inf\), got 0"):
        create_model("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="in_channels must be an integer"):
        create_model("resnet20", num_classes=10, in_channels=2.5)


# ---------------------------------------------------------------- FeatureTap


def _sequential():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def test_feature_tap_on_a_plain_sequential():
    model = _sequential()
    x = torch.rand(5, 3, 6, 6)
    tap = FeatureTap(model, layer="4", classifier="7")
    out = tap(x)
    torch.testing.assert_close(out.features, model[:5](x))
    torch.testing.assert_close(out.embedding, model[:7](x))
    torch.testing.assert_close(out.logits, model(x))
    assert (tap.num_features, tap.embedding_dim, tap.num_classes) == (8, 8, 4)
    assert tap.classifier is model[7] and tap.feature_layer is model[4]
    gap = FeatureTap(model, layer="4")(x)
    torch.testing.assert_close(gap.embedding, model[:5](x).mean(dim=(2, 3)))


def test_feature_tap_on_nested_modules_reproduces_the_backbone():
    model = create_model("resnet20", num_classes=7, width=0.5).eval()
    x = torch.rand(2, 3, 32, 32)
    ref = model(x)
    out = FeatureTap(model, layer="body.5", classifier="classifier")(x)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b)
    deep = FeatureTap(model, layer="body.5.2.conv2")
    block = model.body[5][2]
    block_input = model.body[5][:2](model.body[:5](x))
    expected = block.conv2(block.relu(block.bn1(block.conv1(block_input))))
    torch.testing.assert_close(deep(x).features, expected)
    assert deep.num_features == 32


def test_feature_tap_keeps_nothing_between_calls():
    model = _sequential()
    tap = FeatureTap(model, layer="4", classifier="7")
    out = tap(torch.rand(2, 3, 6, 6))
    ref = weakref.ref(out.features)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    del out
    gc.collect()
    assert ref() is None
    assert not any(isinstance(v, torch.Tensor) for v in vars(tap).values())


def test_feature_tap_under_no_grad_inference_mode_and_channels_last():
    model = _sequential()
    tap = FeatureTap(model, layer="4", classifier="7")
    x = torch.rand(2, 3, 6, 6)
    ref = tap(x)
    with torch.no_grad():
        out = tap(x.contiguous(memory_format=torch.channels_last))
    assert not out.features.requires_grad
    torch.testing.assert_close(out.features, ref.features)
    with torch.inference_mode():
        out = tap(x)
    torch.testing.assert_close(out.logits, ref.logits)
    ref.features.sum().backward()
    assert model[0].weight.grad is not None


def test_feature_tap_bad_layer_name_lists_valid_names():
    model = create_model("resnet20", num_classes=3)
    with pytest.raises(
        ValueError, match=r"layer 'body.9' is not a sub-module of CifarResNet.*'body'"
    ):
        FeatureTap(model, layer="body.9")
    with pytest.raises(ValueError, match=r"classifier 'fc' is not a sub-module.*'classifier'"):
        FeatureTap(model, layer="body", classifier="fc")


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.unused = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        f = self.conv(x)
        return self.fc(f.mean((2, 3))), f


def test_feature_tap_rejects_bad_outputs():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(
        ValueError, match=r"must return a logits tensor of shape \(B, K\) = \(2, K\), got tuple"
    ):
        FeatureTap(_TupleOut(), layer="conv")(x)
    with pytest.raises(ValueError, match="layer 'unused' was not called in the forward pass"):
        FeatureTap(_TupleOut(), layer="unused")(x)
    with pytest.raises(
        ValueError, match=r"layer '6' must output a \(B, C, H, W\) feature map, got \(2, 8\)"
    ):
        FeatureTap(_sequential(), layer="6")(torch.rand(2, 3, 6, 6))
    with pytest.raises(ValueError, match="output of layer '3' was modified in place"):
        FeatureTap(_sequential(), layer="3")(torch.rand(2, 3, 6, 6))
    with pytest.raises(ValueError, match="FeatureTap wraps an nn.Module, got function"):
        FeatureTap(lambda x: x, layer="a")


# ---------------------------------------------------------------- adapters


def _adapter_or_skip(name):
    try:
        return create_model(name, num_classes=4)
    except ImportError as exc:
        assert name.split(":")[0] in str(exc) and "could not be imported" in str(exc)
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_adapters_build_or_skip_with_a_clear_message(name):
    model = _adapter_or_skip(name)
    out = model(torch.rand(1, 3, 64, 64))
    assert out.features.shape == (1, 512, 2, 2) and out.logits.shape == (1, 4)


class _FakeResNet(nn.Module):
    def __init__(self, num_classes, in_chans=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.layer4 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(self.layer4(self.conv1(x)).mean((2, 3)))


def test_timm_adapter_passes_options_and_taps_layer4(monkeypatch):
    calls = []

    def fake_create_model(name, *, pretrained, num_classes, in_chans, **kwargs):
        calls.append((name, pretrained, num_classes, in_chans, kwargs))
        return _FakeResNet(num_classes, in_chans)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=fake_create_model))
    model = create_model(
        "timm:resnet18", num_classes=5, in_channels=1, drop_rate=0.1, probe_size=16
    )
    assert calls == [("resnet18", False, 5, 1, {"drop_rate": 0.1})]
    assert (model.num_features, model.embedding_dim, model.num_classes) == (6, 6, 5)
    assert model.training  # the probe ran in eval mode and restored it
    assert isinstance(model, FeatureTap) and (model.layer, model.classifier_name) == (
        "layer4",
        "fc",
    )
    out = model(torch.rand(2, 1, 8, 8))
    assert out.features.shape == (2, 6, 4, 4) and out.logits.shape == (2, 5)
    torch.testing.assert_close(out.embedding, out.features.mean((2, 3)))
    custom = create_model("timm:convnext_tiny", num_classes=5, layer="conv1")
    assert custom(torch.rand(1, 3, 8, 8)).features.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="needs the option layer=<name of the module"):
        create_model("timm:vit_base", num_classes=5)


def test_torchvision_adapter_uses_get_model(monkeypatch):
    seen = {}

    def get_model(name, *, weights, num_classes):
        seen.update(name=name, weights=weights)
        return _FakeResNet(num_classes)

    fake = types.SimpleNamespace(models=types.SimpleNamespace(get_model=get_model))
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    model = create_model("torchvision:resnet50", num_classes=3, probe_size=None)
    assert seen == {"name": "resnet50", "weights": None}
    assert model.num_features == 6  # the last conv inside layer4, before any forward pass
    assert model(torch.rand(1, 3, 8, 8)).logits.shape == (1, 3)
    with pytest.raises(ValueError, match="torchvision models take in_channels=3, got 1"):
        create_model("torchvision:resnet50", num_classes=3, in_channels=1)


def test_adapter_import_failure_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(
        ImportError,
        match=r"model 'timm:resnet18' needs the 'timm' package, which could not be imported",
    ):
        create_model("timm:resnet18", num_classes=2)


def test_feature_tap_infer_dims_restores_the_training_mode():
    model = _sequential().train()
    tap = FeatureTap(model, layer="5")  # AdaptiveAvgPool2d: sizes unknown until a forward pass
    assert tap.num_features is None
    dims = tap.infer_dims((1, 3, 6, 6))
    assert dims == {"num_features": 8, "embedding_dim": 8, "num_classes": 4}
    assert tap.training and model[1].training
    assert model[1].num_batches_tracked.item() == 0  # the dry run did not touch BN statistics
