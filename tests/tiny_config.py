"""The smallest real training config the tests share: a narrow ConvNet on digits, one epoch."""

TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits"},
    "losses": [{"name": "ce"}],
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "epochs": 1,
    "batch_size": 128,
    "device": "cpu",
}
