"""What a run writes besides scalars (config text, HParams, Custom Scalars layout), and that
docs/tensorboard.md documents every tag short runs write."""

import re
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from parallel_rl.metrics import CUSTOM_SCALARS_LAYOUT, HPARAMS_METRIC

DOC = Path(__file__).resolve().parents[2] / "docs" / "tensorboard.md"


def load(run_dir):
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def documented(tag):
    """Whether docs/tensorboard.md names ``tag`` in backticks; `<layer>`-style placeholders match any text."""
    tokens = [t for t in re.findall(r"`([^`\n]+)`", DOC.read_text()) if re.sub(r"<\w+>", "", t)]
    return any(re.fullmatch(re.sub(r"<\w+>", ".+", re.escape(token)), tag) for token in tokens)


def test_config_text_is_the_resolved_config(cartpole_runs):
    run, _ = cartpole_runs["paac_s1"]
    accumulator = load(run)
    assert "config/text_summary" in accumulator.PluginTagToContent("text")
    (event,) = accumulator.Tensors("config/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert text.startswith("```yaml\n") and text.endswith("```")
    assert yaml.safe_load(text.removeprefix("```yaml\n").removesuffix("```")) == yaml.safe_load((run / "config.yaml").read_text())


def test_hparams_hold_flat_config_and_final_recent_return(cartpole_runs):
    run, stdout = cartpole_runs["paac_s1"]
    accumulator = load(run)
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == [HPARAMS_METRIC]
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = session.hparams
    assert hparams["env.id"].string_value == "CartPole-v1"
    assert hparams["algo.gamma"].number_value == pytest.approx(0.99)
    assert hparams["actors.num_envs"].number_value == 32
    assert hparams["total_steps"].number_value == 4000
    assert {h.name for h in experiment.hparam_infos} == set(hparams)
    # the metric is the recent return the launch printed at the end
    printed = float(re.search(r"recent mean return (-?[\d.]+)", stdout)[1])
    (metric,) = accumulator.Scalars(HPARAMS_METRIC)
    assert metric.step == 4000 and metric.value == pytest.approx(printed, abs=0.006)


def test_custom_scalars_layout_groups_returns_throughput_diagnostics(cartpole_runs):
    run, _ = cartpole_runs["paac_s1"]
    accumulator = load(run)
    (event,) = accumulator.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == ["returns", "throughput", "diagnostics"]
    charts = {chart.title: list(chart.multiline.tag) for c in layout.category for chart in c.chart}
    assert charts["agent steps per second"] == ["charts/sps"]
    # every scalar the runs write lands in some chart of the layout
    scalars = set(accumulator.Tags()["scalars"]) | set(load(cartpole_runs["impala_s1"][0]).Tags()["scalars"])
    patterns = [p for c in CUSTOM_SCALARS_LAYOUT.values() for _, (_, regexes) in c.items() for p in regexes]
    unplaced = {tag for tag in scalars - {HPARAMS_METRIC} if not any(re.match(p, tag) for p in patterns)}
    assert not unplaced


def test_every_tag_written_is_documented(cartpole_runs, filmed_cartpole):
    tags = set()
    for run, _ in cartpole_runs.values():
        accumulator = load(run)
        found = accumulator.Tags()
        tags |= set(found["scalars"]) | set(found["tensors"]) | set(found["images"])
        tags |= set(accumulator.PluginTagToContent("hparams"))  # metadata without a value: in no list above
    # the asynchronous run and the filmed run add their own tags
    assert {"diag/queue_fill", "perf/wait_ms", "eval/video", "charts/episodic_return", "_hparams_/experiment"} <= tags
    undocumented = sorted(tag for tag in tags if not documented(tag))  # as a reader of the event file finds it
    assert not undocumented, f"add these tags to {DOC}: {undocumented}"


def tag_literals():
    """Every plain tag string in the package's source (f-strings are covered by the runs above)."""
    source = Path(__file__).resolve().parents[2] / "parallel_rl"
    pattern = re.compile(r"""["']((?:charts|losses|diag|perf|eval|hparams)/[\w./-]+)["']""")
    return {tag for path in source.rglob("*.py") for tag in pattern.findall(path.read_text())}


def test_every_tag_in_the_source_is_documented_and_charted():
    tags = tag_literals()
    assert {"charts/episodic_return", "diag/grad_norm", "eval/video"} <= tags
    assert not sorted(tag for tag in tags if not documented(tag))
    patterns = [p for c in CUSTOM_SCALARS_LAYOUT.values() for _, (_, regexes) in c.items() for p in regexes]
    scalars = {tag for tag in tags if not tag.startswith(("eval/", "hparams/"))}
    assert not sorted(tag for tag in scalars if not any(re.match(p, tag) for p in patterns))
