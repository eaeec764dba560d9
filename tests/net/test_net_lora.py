"""LoRA over gRPC: a server and three client processes on 127.0.0.1 fine-tune a base file every
party holds; only the adapters travel, and the result is the simulation's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import final_vector, simulate, start_server, write_config
from fedfleet.models import save_base
from fedfleet.net._cli import read_config
from fedfleet.runs._build import load_task_for
from fedfleet.runs._models import model_factory

pytest.importorskip("peft")


def test_lora_adapters_travel_and_match_simulation_bit_for_bit(procs):
    config = write_config(procs.tmp / "run.toml", rounds=2, hidden=32)
    plain, _ = read_config(config)
    base = save_base(
        model_factory(plain.model, load_task_for(plain))(), procs.tmp / "b.safetensors"
    )
    text = config.read_text().replace(
        "[model]\n",
        f'[model]\nbase = "{base}"\nlora_rank = 4\nlora_alpha = 8\nlora_targets = ["1"]\n',
    )
    config.write_text(text)
    run_dir = procs.tmp / "run"
    port = start_server(
        procs, config, "--insecure", "--out", str(run_dir), "--min-clients", "3",
        "--round-timeout", "120",
    )  # fmt: skip
    clients = [
        procs.cli(f"client{c}", "client", "--server", f"127.0.0.1:{port}", "--config",
                  str(config), "--client-id", str(c), "--insecure")
        for c in range(3)
    ]  # fmt: skip
    reference = simulate(config)
    assert procs.wait(procs.procs[0], 600) == 0, procs.log("server")
    for p in clients:
        assert procs.wait(p, 600) == 0, procs.log(p.name)
    got = final_vector(run_dir, config)
    assert np.array_equal(got, reference), f"max diff {np.abs(got - reference).max()}"
    # the model the server keeps is the adapters of layer "1" (64 -> 32), A and B: 4*64 + 32*4
    saved = load_file(str(run_dir / "model.safetensors"))
    adapter = next(iter(saved)).split(".")[-2]  # the digest of the base (lora.adapter_name)
    assert {k: v.shape for k, v in saved.items()} == {
        f"base_model.model.1.lora_A.{adapter}.weight": (4, 64),
        f"base_model.model.1.lora_B.{adapter}.weight": (32, 4),
    }
    assert got.size == 4 * 64 + 32 * 4
