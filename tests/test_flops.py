"""Size report: the paper's Params / FLOPs columns (Tables I-II), exact MACs, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cdkd.flops import _paper_macs, cli, parse_input_size, size_report
from cdkd.models import build_pose_model

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    "arch,joints,size,k,paper_gflops,params_m,gmacs",
    [
        ("hrnet_w32", 16, 32, 2.0, 0.148, 28.5, 0.159),  # Table I, 32x32 (MPII)
        ("hrnet_w32", 16, 64, 3.0, 0.593, 28.6, 0.639),  # Table I, 64x64 (MPII)
        ("hrnet_w48", 17, 64, 3.0, 1.218, 63.7, 1.309),  # Table II, 64x64 (COCO)
    ],
)
def test_size_report_reproduces_paper_tables(arch, joints, size, k, paper_gflops, params_m, gmacs):
    report = size_report(arch, num_joints=joints, input_size=size, split_ratio=k)
    assert set(report) == {"params", "params_m", "gmacs", "paper_gflops"}
    assert round(report["paper_gflops"], 3) == paper_gflops
    assert round(report["params_m"], 1) == params_m
    assert round(report["gmacs"], 3) == gmacs


def test_mpii_w32_64_parameter_count_is_exact():
    assert size_report("hrnet_w32", 16, 64, 3.0)["params"] == 28_634_768


def test_exact_and_paper_counts_differ_only_by_the_head_term():
    joints, size, k = 16, 64, 3
    report = size_report("hrnet_w8_tiny", joints, size, k)
    plane, bins = (size // 4) ** 2, size * k
    exact_head = 2 * joints * plane * bins  # two Linear(H/4*W/4 -> size*k) on J rows
    paper_head = 2 * joints * bins * joints  # get_model_summary multiplies by input.size(1) = J
    difference = report["gmacs"] * 1e9 - report["paper_gflops"] * 1024**3
    assert round(difference) == exact_head - paper_head


def test_paper_rule_on_a_hand_counted_model():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # out 8x8: 8*3*3*3 * 64 = 13824
            self.body = nn.Sequential(nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False))  # out 16x16: 8*4*4*4 * 256
            self.fc = nn.Linear(256, 10)  # input [1, 4, 256] -> output 40 values * input.size(1)=4

        def forward(self, x):
            return self.fc(self.body(self.conv(x)).flatten(2))

    count = _paper_macs(Toy(), torch.zeros(1, 3, 16, 16))
    assert count == 8 * 3 * 3 * 3 * 64 + 8 * 4 * 4 * 4 * 256 + 40 * 4


def test_model_and_arch_give_the_same_report_and_model_mode_is_kept():
    model = build_pose_model("hrnet_w8_tiny", 17, (64, 32), 2.0).train()
    from_model = size_report(model)
    assert model.training
    assert from_model == size_report("hrnet_w8_tiny", 17, (64, 32), 2.0)


def test_parse_input_size():
    assert parse_input_size("64") == (64, 64)
    assert parse_input_size("256x192") == (256, 192)
    assert parse_input_size("64X48") == (64, 48)
    for bad in ("", "64x", "ax3", "64x48x2", "0"):
        with pytest.raises(Exception, match="--input expects"):
            parse_input_size(bad)


def test_cli_json_and_text(capsys):
    assert cli(["--arch", "hrnet_w8_tiny", "--joints", "16", "--input", "64", "--split", "3", "--json"], "flops") == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"params", "params_m", "gmacs", "paper_gflops"}
    assert report == size_report("hrnet_w8_tiny", 16, 64, 3.0)

    assert cli(["--arch", "hrnet_w8_tiny", "--joints", "17", "--input", "128x96", "--split", "2"], "flops") == 0
    text = capsys.readouterr().out
    expected = size_report("hrnet_w8_tiny", 17, (128, 96), 2.0)
    assert "input 128x96 (H x W)" in text
    assert f"{expected['params']:,}" in text
    assert f"exact GMACs           {expected['gmacs']:.3f}" in text
    assert f"paper GFLOPs          {expected['paper_gflops']:.3f}" in text
    assert "1024^3" in text

    with pytest.raises(SystemExit):
        cli(["--arch", "hrnet_w99"], "flops")
    assert "unknown arch 'hrnet_w99'" in capsys.readouterr().err
