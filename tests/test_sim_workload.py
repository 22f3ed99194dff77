import json
import random

import pytest

from shared.sim.workload import (DATA_DIR, LengthScaling, build_requests, generate_arrivals, load_trace,
                                 native_rps, parse_slo_mix, rescale_arrivals, synthetic_rows)


def test_azure_traces_ship_with_the_repo():
    assert (DATA_DIR / "README.md").read_text().count("CC-BY 4.0") >= 1
    conv = load_trace("azure_conv")
    assert len(conv) > 19000
    assert conv[0].t == 0.0 and all(a.t <= b.t for a, b in zip(conv, conv[1:]))
    assert 3400 < conv[-1].t < 3600  # one hour
    assert 5.0 < native_rps(conv) < 6.0
    assert len(load_trace("azure_code")) > 8000


def test_rescale_rate_and_tiling():
    rows = load_trace("azure_conv")
    fast = rescale_arrivals(rows, 50.0, None)
    assert len(fast) == len(rows)
    assert native_rps(fast) == pytest.approx(50.0, rel=1e-6)
    tiled = rescale_arrivals(rows[:100], 10.0, 60.0)
    assert len(tiled) > 100 and tiled[-1].t < 60.0
    assert all(a.t <= b.t for a, b in zip(tiled, tiled[1:]))


def test_length_scaling():
    s = LengthScaling(output_len=256, block_len=32, prompt_scale=0.25, min_prompt=16, max_prompt=1024)
    assert s.prompt(1000) == 250 and s.prompt(10) == 16 and s.prompt(10**6) == 1024
    assert s.output(5) == 256
    k = LengthScaling(keep_output=True)
    assert k.output(5) == 32 and k.output(100) == 128 and k.output(5000) == 256


def test_custom_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("timestamp,input,output\n10.5,100,20\n10.0,50,10\n12.0,70,5\n")
    rows = load_trace(str(csv_path))
    assert [(r.t, r.prompt, r.output) for r in rows] == [(0.0, 50, 10), (0.5, 100, 20), (2.0, 70, 5)]
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps({"time": t, "input_tokens": 8, "output_tokens": 4}) for t in (3, 1, 2)))
    assert [r.t for r in load_trace(str(jl))] == [0.0, 1.0, 2.0]


def test_generators_are_seeded_and_bursty():
    a = generate_arrivals("poisson", 20.0, 100.0, random.Random(1))
    b = generate_arrivals("poisson", 20.0, 100.0, random.Random(1))
    assert a == b and 1700 < len(a) < 2300
    g = generate_arrivals("gamma", 20.0, 200.0, random.Random(1), cv=4.0)
    gaps = [y - x for x, y in zip(g, g[1:])]
    mean = sum(gaps) / len(gaps)
    cv = (sum((x - mean) ** 2 for x in gaps) / len(gaps)) ** 0.5 / mean
    assert cv > 2.0  # much burstier than Poisson (cv = 1)
    rows = synthetic_rows("gamma", 20.0, 30.0, seed=3)
    assert rows == synthetic_rows("gamma", 20.0, 30.0, seed=3)


def test_slo_mix():
    classes = parse_slo_mix("interactive:0.3:2:1,batch:0.7:6")
    assert [(c.name, c.fraction, c.multiplier, c.priority) for c in classes] == [
        ("interactive", 0.3, 2.0, 1), ("batch", 0.7, 6.0, 0)]
    rows = rescale_arrivals(load_trace("azure_conv"), 50.0, 60.0)
    reqs = build_requests(rows, LengthScaling(), classes, 1.0, 2.0, seed=0)
    share = sum(r.cls == "interactive" for r in reqs) / len(reqs)
    assert 0.25 < share < 0.35
    assert {r.slo_s for r in reqs} == {4.0, 12.0}
    assert reqs == build_requests(rows, LengthScaling(), classes, 1.0, 2.0, seed=0)
    with pytest.raises(ValueError):
        parse_slo_mix("bad:1")
