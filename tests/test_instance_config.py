import pytest

from shared.instance_config import InstanceConfig, cache_of, device_kind, tp_of, worker_config


def test_short_names_keep_their_spelling_and_defaults():
    for name, tp, cache in [("tp1", 1, "dual"), ("tp4", 4, "dual"), ("tp2-dual", 2, "dual"),
                            ("tp1-prefix", 1, "prefix"), ("tp8-none", 8, "none")]:
        ic = InstanceConfig.parse(name)
        assert (ic.model, ic.device, ic.tp, ic.cache_mode) == ("", "", tp, cache)
        assert ic.name == name and (tp_of(name), cache_of(name)) == (tp, cache)


def test_full_names_round_trip():
    ic = InstanceConfig("dilaserve-tiny", "cpu", 1, "dual")
    assert ic.name == str(ic) == "dilaserve-tiny/cpu/tp1-dual"
    assert InstanceConfig.parse(ic.name) == ic
    hub = InstanceConfig.parse("GSAI-ML/LLaDA-8B-Base/h100/tp4-prefix")  # a model name with a slash
    assert (hub.model, hub.device, hub.tp, hub.cache) == ("GSAI-ML/LLaDA-8B-Base", "h100", 4, "prefix")
    assert InstanceConfig.parse("cpu/tp1").name == "cpu/tp1"


@pytest.mark.parametrize("bad", ["", "cpu-none", "tpx-dual", "tp0", "tp1-foo", "mixed", "/tp1", "m//tp1",
                                 "m/H100/tp1", "tp1:8"])
def test_malformed_names_raise(bad):
    assert InstanceConfig.parse_or_none(bad) is None
    with pytest.raises(ValueError):
        tp_of(bad)


def test_device_kind_normalises_cuda_names():
    assert device_kind("cpu") == "cpu"
    assert device_kind("NVIDIA H100 80GB HBM3") == "h100"
    assert device_kind("NVIDIA A100-SXM4-80GB") == "a100"
    assert device_kind("NVIDIA GeForce RTX 4090") == "rtx4090"
    assert device_kind("NVIDIA GH200 480GB") == device_kind("gh200") == "gh200"


def test_worker_config_separates_devices():
    cpu = worker_config("dilaserve-tiny", "cpu", "dual")
    gpu = worker_config("dilaserve-tiny", "NVIDIA H100 80GB HBM3", "dual")
    assert cpu.name == "dilaserve-tiny/cpu/tp1-dual" and gpu.name == "dilaserve-tiny/h100/tp1-dual"
    assert cpu != gpu and (cpu.tp, cpu.cache_mode) == (gpu.tp, gpu.cache_mode)
    with pytest.raises(ValueError):
        worker_config("dilaserve-tiny", "cpu", "paged")
