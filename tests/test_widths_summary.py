"""reports/widths.py: a per-stage summary for the screen instead of a 90-line table."""
from reports.widths import stage_summary, width_table


def test_stage_summary_and_table():
    before = {"temb.dense.0": 128, "conv_in": 32, "down.0.block.0.conv1": 32, "down.1.attn.0.q": 64,
              "down.1.attn.0.heads": 1, "mid.block_1.conv1": 64, "up.0.block.0.conv1": 32}
    after = {**before, "temb.dense.0": 89, "down.1.attn.0.q": 44, "up.0.block.0.conv1": 24}
    lines = stage_summary(before, after).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["temb", "conv_in", "down.0", "down.1", "mid", "up.0"]
    assert lines[4].split()[1:] == ["1", "64", "->", "44", "68.8%"]
    table = width_table(before, after)
    assert len(table.splitlines()) == 1 + len(before) and table.count("*") == 3
