"""Fuzzed configuration files and `--set` overrides: exit code 2 and a message, never a traceback.

Property-based (hypothesis) over the live schema, so keys added later are fuzzed too:
unknown keys, values of the wrong type, out-of-range values (every bound `validate()`
enforces, NaN and inf included), malformed YAML and undecodable bytes. The CLI runs
in-process with `launch --dry-run`, which validates exactly what `launch` does before it
creates anything; a few cases also go through a real subprocess.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallel_rl.algos.paac import PAACConfig
from parallel_rl.cli import main
from parallel_rl.config import AlgoConfig, Config, all_keys, flatten

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _leaves(cls=Config, prefix="") -> dict[str, typing.Any]:
    """Dotted key -> annotation for every value in the schema; the algo section is the one of
    paac_classic's algorithm, PAAC, which the fuzz tests run."""
    out = {}
    hints = typing.get_type_hints(cls)
    for name in (f.name for f in dataclasses.fields(cls)):
        annotation = PAACConfig if hints[name] is AlgoConfig else hints[name]
        if dataclasses.is_dataclass(annotation):
            out.update(_leaves(annotation, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = annotation
    return out


LEAVES = _leaves()
SECTIONS = sorted({key.rsplit(".", 1)[0] for key in LEAVES if "." in key})


def _nested(key: str, value) -> dict:
    doc: typing.Any = value
    for part in reversed(key.split(".")):
        doc = {part: doc}
    return doc


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _yaml_reads_as_str(text: str) -> bool:
    try:
        return isinstance(yaml.safe_load(text), str)
    except yaml.YAMLError:
        return False


_words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_not_numbers = _words.filter(lambda t: not _is_number_text(t))
_containers = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(_words, st.integers(), max_size=2))


def wrong_type(annotation) -> st.SearchStrategy:
    """Values no field of this annotation accepts."""
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        return st.one_of(_words.filter(lambda t: t not in choices), st.integers(), st.none(), _containers)
    if annotation is bool:
        return st.one_of(st.integers(), st.floats(), _words, st.none(), _containers)
    if annotation is int:
        return st.one_of(_not_numbers, st.booleans(), st.none(), _containers,
                         st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not float(x).is_integer()))
    if annotation is float:
        return st.one_of(_not_numbers, st.booleans(), st.none(), _containers)
    if annotation is str:
        return st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), _containers)
    raise AssertionError(f"no wrong-type strategy for {annotation!r}")


_non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
# every bound validate() enforces, as values just outside it (and far outside it)
OUT_OF_RANGE = {
    **{key: st.integers(max_value=0) for key in (
        "total_steps", "actors.num_envs", "algo.rollout_length", "model.width", "env.frame_skip", "env.frame_stack",
        "env.image_size", "logging.return_window", "checkpoint.keep_last", "max_nonfinite_updates",
        "actors.slots_per_actor", "algo.update_epochs", "algo.num_minibatches", "env.noop_max")},
    **{key: st.integers(max_value=-1) for key in (
        "actors.env_groups", "model.depth", "env.max_episode_steps", "actors.num_threads",
        "torch_threads", "checkpoint.interval_steps")},
    **{key: st.one_of(st.floats(max_value=-1e-9, allow_infinity=True), _non_finite) for key in (
        "algo.max_grad_norm", "algo.reward_clip", "algo.entropy_coef", "algo.value_coef", "logging.interval_s")},
    "actors.procs": st.integers(max_value=-2),
    "actors.max_policy_lag": st.integers(max_value=-2),
    "algo.gamma": st.one_of(st.floats(min_value=1.0, exclude_min=True), st.floats(max_value=0.0, exclude_max=True), _non_finite),
    "env.sticky_action_prob": st.one_of(st.floats(min_value=1.0), st.floats(max_value=0.0, exclude_max=True), _non_finite),
    # above 1.1e38 Adam's first step overflows float32 whatever the recipe (Kron's divisor 3 included)
    "optim.lr": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.1e38, allow_infinity=False), _non_finite),
    "algo.loss_scale": st.one_of(st.floats(max_value=0.0), _non_finite),
    "actors.heartbeat_timeout_s": st.one_of(st.floats(max_value=0.0), _non_finite),
    "device": _words.filter(lambda t: not re.fullmatch("auto|cpu|cuda|cuda:[0-9]+", t)),
    "actors.device": _words.filter(lambda t: not re.fullmatch("auto|cpu|cuda|cuda:[0-9]+", t)),
}
OUT_OF_RANGE = {key: strategy for key, strategy in OUT_OF_RANGE.items() if key in LEAVES}
FLOAT_KEYS = sorted(key for key, annotation in LEAVES.items() if annotation is float)


@st.composite
def invalid_values(draw) -> tuple[str, typing.Any]:
    """(dotted key, a value it must refuse): a wrong type, out of range, or not finite."""
    kind = draw(st.sampled_from(["type", "range", "nan"]))
    if kind == "type":
        key = draw(st.sampled_from(sorted(LEAVES)))
        return key, draw(wrong_type(LEAVES[key]))
    if kind == "range":
        key = draw(st.sampled_from(sorted(OUT_OF_RANGE)))
        return key, draw(OUT_OF_RANGE[key])
    return draw(st.sampled_from(FLOAT_KEYS)), draw(_non_finite)


@st.composite
def unknown_keys(draw) -> str:
    section = draw(st.sampled_from(["", *SECTIONS]))
    # no dots or '=' (they would make another key), no outer blanks (--set strips them)
    name = draw(_words.filter(lambda t: t and t.strip() == t and "." not in t and "=" not in t))
    key = f"{section}.{name}" if section else name
    if key in LEAVES or key in SECTIONS:
        key += "_x"
    return key


_yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _words)
_yaml_values = st.recursive(_yaml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                   st.dictionaries(_words, inner, max_size=3)), max_leaves=8)


@st.composite
def invalid_documents(draw) -> str:
    """A configuration file that must be refused."""
    kind = draw(st.sampled_from(["unknown", "invalid", "malformed", "not-a-mapping"]))
    if kind == "unknown":
        return yaml.safe_dump(_nested(draw(unknown_keys()), draw(_yaml_values)))
    if kind == "invalid":
        return yaml.safe_dump(_nested(*draw(invalid_values())))
    if kind == "malformed":
        valid = yaml.safe_dump(_nested(draw(st.sampled_from(sorted(LEAVES))), 1))
        breaker = draw(st.sampled_from(["[", "{", "key: [1, 2", "\t- x", "a: b: c", "- a\nb: c", "*undefined",
                                        "&a &b x", "'unterminated", '"unterminated', "!!python/object/apply:os.system ['true']",
                                        "---\na: 1\n---\nb: 2", "? [a, b]\n: c", "%YAML 9.9\n---\na: 1"]))
        return valid + breaker
    return yaml.safe_dump(draw(st.one_of(st.lists(_yaml_values, min_size=1), st.integers(), st.floats(),
                                         _words.filter(lambda t: t.strip() != "" and _yaml_reads_as_str(t)))))


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """parallel_rl.cli.main in-process; an exception escaping it fails the test with its traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors (exit code 2, a usage message)
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_refused(code: int, err: str) -> None:
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 3, err  # one paragraph, not a dump


@FUZZ
@given(document=invalid_documents())
def test_invalid_config_files_exit_2(tmp_path, capsys, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(document)
    code, out, err = run_cli(capsys, ["launch", "--config", str(path), "--dry-run"])
    assert_refused(code, err)
    assert out == ""


@FUZZ
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_as_config_file_never_crash(tmp_path, capsys, data):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    code, _, err = run_cli(capsys, ["launch", "--config", str(path), "--dry-run"])
    assert code in (0, 2), err
    if code == 2:
        assert_refused(code, err)


@FUZZ
@given(document=st.dictionaries(st.one_of(st.sampled_from(sorted(LEAVES) + SECTIONS), _words), _yaml_values, max_size=4))
def test_any_mapping_is_refused_cleanly_or_resolves_to_a_round_tripping_config(tmp_path, capsys, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    code, out, err = run_cli(capsys, ["launch", "--config", str(path), "--dry-run"])
    if code == 2:
        assert_refused(code, err)
        return
    assert code == 0, err
    path.write_text(out)  # the printed configuration is itself a valid recipe that resolves to itself
    again = run_cli(capsys, ["launch", "--config", str(path), "--dry-run"])
    assert again[:2] == (0, out), again[2]


@FUZZ
@given(assignment=st.one_of(
    st.tuples(unknown_keys(), _yaml_values).map(lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1]).strip()}"),
    invalid_values().map(lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1], default_flow_style=True).strip()}"),
    _words.filter(lambda t: "=" not in t),
    st.sampled_from(sorted(SECTIONS)).map(lambda s: f"{s}=1"),
))
def test_invalid_set_overrides_exit_2(capsys, assignment):
    code, out, err = run_cli(capsys, ["launch", "--config", "paac_classic", "--dry-run", f"--set={assignment}"])
    assert_refused(code, err)
    assert out == ""


@FUZZ
@given(assignment=st.text(max_size=40))
def test_any_set_override_is_refused_cleanly_or_applied(capsys, assignment):
    code, _, err = run_cli(capsys, ["launch", "--config", "paac_classic", "--dry-run", f"--set={assignment}"])
    assert code in (0, 2), err
    if code == 2:
        assert_refused(code, err)


def test_dry_run_prints_the_resolved_config_and_creates_nothing(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["launch", "--config", "paac_classic", "--set", "algo.gamma=0.95",
                                      "--run-dir", str(tmp_path / "run"), "--dry-run"])
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["algo"]["gamma"] == 0.95 and resolved["env"]["id"] == "CartPole-v1"
    assert sorted(all_keys(PAACConfig, 'algo.') + [k for k in all_keys() if not k.startswith('algo.')]) == sorted(_leaves())
    assert sorted(flatten(resolved)) == sorted(_leaves())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config_text, argv, must_name", [
    ("algo:\n  gamma: [unclosed\n", [], ["not valid YAML at line"]),
    (b"\xff\xfe\x00garbage", [], ["cannot be decoded"]),
    ("", ["--set", "optim.lr=.nan"], ["optim.lr = nan", "finite"]),
])
def test_bad_input_through_a_real_process(tmp_path, config_text, argv, must_name):
    path = tmp_path / "bad.yaml"
    (path.write_bytes if isinstance(config_text, bytes) else path.write_text)(config_text)
    done = subprocess.run([sys.executable, "-m", "parallel_rl.cli", "launch", "--config", str(path), *argv,
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for text in must_name:
        assert text in done.stderr, (text, done.stderr)
    assert not (tmp_path / "run").exists()
