from shared.instance_config import cache_of, tp_of


def test_config_names_give_tensor_parallel_degree_and_cache_mode():
    assert (tp_of("tp4-dual"), cache_of("tp4-dual")) == (4, "dual")
    assert (tp_of("tp1-prefix"), cache_of("tp1-prefix")) == (1, "prefix")
    assert (tp_of("tp2"), cache_of("tp2")) == (2, "dual")
    assert (tp_of("cpu-none"), cache_of("cpu-none")) == (1, "none")  # no tp<N> head: one device
    assert tp_of("tpx-dual") == 1
