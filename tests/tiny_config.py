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

# The tune tests' config: MC-Loss with its search space; needs a validation split.
TUNE_TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits", "val_fraction": 0.25},
    "losses": [{"name": "ce"}, {"name": "mc"}],
    "optim": {"lr": 0.1},
    "schedule": {"name": "constant"},
    "epochs": 3,
    "batch_size": 32,
    "device": "cpu",
    # MC's weights and the learning rate; a wide lr range gives the pruner poor trials to stop
    "search": {"mc": {"keep_ratio": None, "pool": None}, "optim": {"lr": [1e-4, 0.5]}},
}
