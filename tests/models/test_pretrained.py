"""``model.weights``: torchvision-layout and own-layout state_dicts into the built-in backbones,
one-line errors for wrong files, and the optimiser's pretrained/new parameter groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chanloss.config import ConfigError, OptimConfig, ScheduleConfig, load_config
from chanloss.models import create_model
from chanloss.models.pretrained import checkpoint_weights
from chanloss.run.optim import build_optimizer, build_scheduler


def _conv(sd, name, cout, cin, k, bias=False):
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k)
    if bias:
        sd[f"{name}.bias"] = torch.randn(cout)


def _bn(sd, name, c):
    sd[f"{name}.weight"] = torch.rand(c) + 0.5
    sd[f"{name}.bias"] = torch.randn(c)
    sd[f"{name}.running_mean"] = torch.randn(c)
    sd[f"{name}.running_var"] = torch.rand(c) + 0.5
    sd[f"{name}.num_batches_tracked"] = torch.tensor(7)


def torchvision_resnet(bottleneck: bool, layers, width: float = 1.0, in_ch: int = 3) -> dict:
    """A state_dict with the key names and shapes of torchvision's ``resnet18``/``resnet50``
    (written out here from torchvision's layout, independently of chanloss's modules)."""
    sd: dict = {}
    base = round(64 * width)
    _conv(sd, "conv1", base, in_ch, 7)
    _bn(sd, "bn1", base)
    cin = base
    for stage, count in enumerate(layers):
        mid = base * 2**stage
        cout = mid * (4 if bottleneck else 1)
        for i in range(count):
            p = f"layer{stage + 1}.{i}"
            if bottleneck:
                _conv(sd, f"{p}.conv1", mid, cin, 1)
                _bn(sd, f"{p}.bn1", mid)
                _conv(sd, f"{p}.conv2", mid, mid, 3)
                _bn(sd, f"{p}.bn2", mid)
                _conv(sd, f"{p}.conv3", cout, mid, 1)
                _bn(sd, f"{p}.bn3", cout)
            else:
                _conv(sd, f"{p}.conv1", cout, cin, 3)
                _bn(sd, f"{p}.bn1", cout)
                _conv(sd, f"{p}.conv2", cout, cout, 3)
                _bn(sd, f"{p}.bn2", cout)
            if i == 0 and (stage > 0 or cin != cout):
                _conv(sd, f"{p}.downsample.0", cout, cin, 1)
                _bn(sd, f"{p}.downsample.1", cout)
            cin = cout
    sd["fc.weight"] = torch.randn(1000, cin)
    sd["fc.bias"] = torch.randn(1000)
    return sd


def torchvision_vgg16_bn(width: float = 1.0) -> dict:
    """torchvision's ``vgg16_bn`` layout: ``features.N`` (convolutions with biases, BN, ReLU,
    max pooling) and the ``classifier.{0,3,6}`` MLP."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    sd: dict = {}
    index, cin = 0, 3
    for v in cfg:
        if v == "M":
            index += 1
            continue
        cout = round(v * width)
        _conv(sd, f"features.{index}", cout, cin, 3, bias=True)
        _bn(sd, f"features.{index + 1}", cout)
        index, cin = index + 3, cout
    for i, o in enumerate([4096, 4096, 1000]):
        sd[f"classifier.{3 * i}.weight"] = torch.randn(o, 8)  # shapes are not used
        sd[f"classifier.{3 * i}.bias"] = torch.randn(o)
    return sd


def test_torchvision_resnet18_loads_every_key_and_replaces_the_classifier(tmp_path, capsys):
    sd = torchvision_resnet(False, (2, 2, 2, 2))
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    model = create_model("resnet18", num_classes=7, weights=str(path))
    report = model.pretrained_report
    assert report["layout"] == "torchvision" and report["skipped"] == ["fc.weight", "fc.bias"]
    assert report["loaded"] == len(sd) - 2 == len(model.state_dict()) - 2
    assert report["new"] == ["classifier.weight", "classifier.bias"]
    assert torch.equal(model.body.stem[0].weight, sd["conv1.weight"])
    assert torch.equal(model.body.stem[1].running_var, sd["bn1.running_var"])
    assert torch.equal(model.body.layer3[0].shortcut[0].weight, sd["layer3.0.downsample.0.weight"])
    assert torch.equal(model.body.layer4[1].bn2.bias, sd["layer4.1.bn2.bias"])
    assert model.classifier.weight.shape == (7, 512)
    names = {n for n, _ in model.named_parameters()}
    assert model.pretrained_parameters == names - {"classifier.weight", "classifier.bias"}


def test_torchvision_resnet50_and_one_channel_input(tmp_path):
    sd = torchvision_resnet(True, (3, 4, 6, 3), width=0.25)
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = create_model("resnet50", num_classes=5, in_channels=1, width=0.25, weights=str(path))
    assert model.pretrained_report["loaded"] == len(sd) - 2
    assert (
        model.pretrained_report["adapted"] == "body.stem.0.weight: 3 -> 1 input channels (summed)"
    )
    torch.testing.assert_close(model.body.stem[0].weight, sd["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(
        model.body.layer1[0].shortcut[1].running_mean, sd["layer1.0.downsample.1.running_mean"]
    )
    assert torch.equal(model.body.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])


def test_torchvision_vgg16_bn_folds_conv_biases_into_the_batch_norm(tmp_path):
    sd = torchvision_vgg16_bn(width=0.25)
    path = tmp_path / "vgg.pth"
    torch.save(sd, path)
    # a widened last convolution does not fit the file
    with pytest.raises(ValueError, match=r"of another shape .*body\.40\.weight"):
        create_model("vgg16_bn", num_classes=3, width=0.25, feature_channels=100, weights=str(path))
    model = create_model("vgg16_bn", num_classes=3, width=0.25, weights=str(path), head="mcloss")
    report = model.pretrained_report
    assert len(report["skipped"]) == 6 and all(
        k.startswith("classifier.") for k in report["skipped"]
    )
    assert all(k.startswith(("classifier.", "head.")) for k in report["new"])
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    reference = F.batch_norm(
        F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], padding=1),
        sd["features.1.running_mean"],
        sd["features.1.running_var"],
        sd["features.1.weight"],
        sd["features.1.bias"],
    )
    torch.testing.assert_close(model.body[:2](x), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.body[38].weight, sd["features.38.weight"], rtol=0, atol=0)


def test_own_layout_and_chanloss_checkpoint_load(tmp_path):
    source = create_model("resnet18", num_classes=4, width=0.25, head="mcloss", head_hidden=8)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    model = create_model(
        "resnet18", num_classes=9, width=0.25, head="mcloss", head_hidden=8, weights=str(path)
    )
    assert model.pretrained_report["layout"] == "chanloss"
    assert model.pretrained_report["new"] == ["classifier.weight", "classifier.bias"]
    assert torch.equal(model.head.mlp[1].weight, source.head.mlp[1].weight)
    assert "head.mlp.1.weight" in model.pretrained_parameters


def test_wrong_weight_files_give_one_line_errors(tmp_path):
    resnet18 = torchvision_resnet(False, (2, 2, 2, 2), width=0.25)
    cases = {
        "missing.pth": None,
        "text.pth": b"not a torch file\n",
        "list.pth": [1, 2, 3],
        "strings.pth": {"conv1.weight": "abc"},
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        with pytest.raises(ValueError) as info:
            create_model("resnet18", num_classes=2, width=0.25, weights=str(path))
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"weights: {path}") and len(message) < 400
    path = tmp_path / "r18.pth"
    torch.save(resnet18, path)
    with pytest.raises(ValueError) as info:
        create_model("resnet50", num_classes=2, width=0.25, weights=str(path))
    message = str(info.value)
    assert "\n" not in message and "does not fit this ResNet" in message
    assert "missing from the file" in message and "of another shape" in message
    with pytest.raises(ValueError, match="not in the layout of SmallConvNet|has no option"):
        create_model("convnet_small", num_classes=2, weights=str(path))
    # through the config and the CLI's error type
    raw = {
        "model": {"name": "resnet50", "width": 0.25, "weights": str(path)},
        "data": {"name": "digits"},
        "losses": [{"name": "ce"}],
        "device": "cpu",
    }
    from chanloss.run.builders import build_model

    with pytest.raises(ConfigError, match=r"^model: weights: .*does not fit this ResNet"):
        build_model(load_config(raw=raw), num_classes=10, in_channels=1)


def test_optimiser_groups_and_checkpoint_builds(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision_resnet(False, (2, 2, 2, 2), width=0.25), path)
    model = create_model(
        "resnet18", num_classes=3, width=0.25, head="mcloss", head_hidden=8, weights=str(path)
    )
    optimizer = build_optimizer(OptimConfig(lr=0.1, pretrained_lr_mult=0.1), model, [], [])
    new, loaded = optimizer.param_groups
    assert new["lr"] == pytest.approx(0.1) and loaded["lr"] == pytest.approx(0.01)
    ids = {id(p) for p in loaded["params"]}
    assert ids == {id(p) for n, p in model.named_parameters() if n.startswith("body.")}
    assert {id(p) for p in new["params"]} == {
        id(p) for n, p in model.named_parameters() if n.startswith(("head.", "classifier."))
    }
    scheduler = build_scheduler(
        ScheduleConfig(name="cosine"), optimizer, steps_per_epoch=2, epochs=2
    )
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * optimizer.param_groups[0]["lr"])
    # without pretrained weights: one group at lr, as before
    plain = create_model("resnet18", num_classes=3, width=0.25)
    assert (
        len(build_optimizer(OptimConfig(pretrained_lr_mult=0.1), plain, [], []).param_groups) == 1
    )
    # building from a checkpoint does not read the file, and groups the parameters the same way
    path.unlink()
    with checkpoint_weights():
        again = create_model(
            "resnet18", num_classes=3, width=0.25, head="mcloss", head_hidden=8, weights=str(path)
        )
    assert again.pretrained_parameters == model.pretrained_parameters
    with pytest.raises(ValueError, match="not found"):
        create_model("resnet18", num_classes=3, width=0.25, weights=str(path))


def test_a_run_from_pretrained_weights_trains_and_evaluates_without_the_file(tmp_path):
    from chanloss.analysis.evaluate import evaluate_checkpoint
    from chanloss.run.session import train

    path = tmp_path / "r18.pth"
    torch.save(torchvision_resnet(False, (2, 2, 2, 2), width=0.25), path)
    raw = {
        "model": {"name": "resnet18", "width": 0.25, "weights": str(path)},
        "data": {"name": "digits"},
        "losses": [{"name": "ce"}],
        "optim": {"lr": 0.05, "pretrained_lr_mult": 0.1},
        "schedule": {"name": "constant"},
        "epochs": 1,
        "batch_size": 256,
        "device": "cpu",
    }
    summary = train(load_config(raw=raw), tmp_path / "run", verbose=0)
    assert summary["finished"]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([0.05, 0.005])
    path.unlink()  # evaluation takes the tensors from the checkpoint
    result = evaluate_checkpoint(tmp_path / "run" / "last.pt", tmp_path / "eval", verbose=0)
    assert result["top1"] == pytest.approx(summary["final_test_acc"])
    from chanloss.inference import load_model

    trained = load_model(tmp_path / "run" / "last.pt")
    assert trained.network.body.stem[0].weight.shape[1] == 1
