import pytest

from fedfleet.errors import ConfigError
from fedfleet.runs._config import RunConfig, apply_overrides, dump_config, load_config


def test_defaults_are_the_readme_run():
    cfg = load_config()
    assert (cfg.data.name, cfg.data.num_clients, cfg.data.partition, cfg.data.alpha) == (
        "digits",
        20,
        "dirichlet",
        0.5,
    )
    assert (cfg.model.name, cfg.strategy.name, cfg.strategy.clients_per_round) == (
        "mlp",
        "fedavg",
        10,
    )


def test_toml_file_plus_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'rounds = 7\n[client]\nlr = 0.2\noptimizer = "Adam"\n[model]\nhidden = [32, 16]\n'
    )
    cfg = load_config(path, ["client.lr=0.3", "seed=4", "data.partition=iid", "model.hidden=[8]"])
    assert cfg.rounds == 7 and cfg.seed == 4
    assert cfg.client.lr == 0.3 and cfg.client.optimizer == "adam"
    assert cfg.data.partition == "iid" and cfg.model.hidden == (8,)


def test_overrides_do_not_mutate_the_callers_dict():
    raw = {"client": {"lr": 0.1}}
    apply_overrides(raw, ["client.lr=0.5"])
    assert raw == {"client": {"lr": 0.1}}


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["client.lrr=0.1"])
    msg = str(info.value)
    assert "unknown key 'client.lrr'" in msg
    assert "valid keys in [client]: epochs, batch_size, lr, optimizer" in msg


def test_unknown_top_level_key_and_section():
    with pytest.raises(
        ConfigError, match=r"unknown key 'round'.*valid keys in the top level: seed, rounds"
    ):
        load_config(None, ["round=3"])
    with pytest.raises(ConfigError, match=r"unknown section 'clinet'.*valid sections: data, model"):
        load_config(None, ["clinet.lr=3"])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("client.lr=-1", "client.lr: Input should be greater than 0"),
        ("client.lr=fast", "client.lr: Input should be a valid number"),
        ("data.partition=random", "data.partition: Input should be 'iid', 'dirichlet'"),
        ("model.name=resnet", "model.name: Input should be 'logreg', 'mlp', '2nn', 'cnn', "),
        ("client.optimizer=sgdd", "unknown optimizer 'sgdd'; valid: "),
        ("rounds=0", "rounds: Input should be greater than or equal to 1"),
        ("eval.federated_every=1", "needs held-out client data"),
        (
            "executor=threads",
            "executor: Input should be 'auto', 'sequential', 'threaded', 'vectorised', ",
        ),
        ("workers=0", "workers: Input should be greater than or equal to 1"),
        ("device=tpu", "device: Input should be 'cpu' or 'cuda'"),
        (
            "worker_executor=ray",
            "worker_executor: Input should be 'auto', 'sequential', 'vectorised' or 'compiled'",
        ),
        # a key of other datasets only: the error says whose it is
        (
            "data.max_samples=0",
            "unknown key 'data.max_samples' for dataset 'digits'; max_samples is a parameter of "
            "synthetic-population, synthetic-iid-population and has no effect with digits",
        ),
    ],
)
def test_bad_values_say_what_is_valid(override, fragment):
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["client.lr"])


def test_dumped_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["client.lr=0.3", "strategy.fraction=0.5", "model.hidden=[4, 5]"])
    path = tmp_path / "config.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert isinstance(cfg, RunConfig)


def test_executor_keys_round_trip_and_are_listed(tmp_path):
    sets = ["executor=ray", "workers=4", "ray_address=10.0.0.1:6379", "worker_executor=sequential"]
    cfg = load_config(None, [*sets, "ray_connect_timeout_s=5"])
    assert (cfg.executor, cfg.workers, cfg.ray_address) == ("ray", 4, "10.0.0.1:6379")
    assert (load_config().ray_connect_timeout_s, cfg.ray_connect_timeout_s) == (30.0, 5.0)
    path = tmp_path / "config.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    with pytest.raises(ConfigError, match=r"valid keys in the top level: .*workers, .*device"):
        load_config(None, ["worker=2"])


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["device=cuda", "executor=process"], "CUDA does not survive the fork"),
        (["device=cuda", "model.name=logreg", "model.backend=numpy"], "model.backend = 'torch'"),
        (["executor=process", "strategy.name=fedbuff"], "fedbuff runs its own asynchronous"),
    ],
)
def test_executor_and_device_combinations_refused(overrides, fragment):
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_config(None, overrides)
    assert fragment in str(info.value)
