"""Settings: layering and provenance, validation messages, variants, params.yaml/dvc.yaml agreement."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from pipeline.config.settings import (
    SECTIONS,
    ModelSettings,
    Settings,
    SettingsError,
    load_settings,
    variant_settings,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_precedence_set_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = _write(tmp_path / "p.yaml", {"train": {"max_steps": 10, "seed": 1, "log_every": 5}})
    env = {"LRT_TRAIN__MAX_STEPS": "20", "LRT_TRAIN__SEED": "2", "LRT_SHARED_DATA": "ignored"}
    s = load_settings(config, ["train.max_steps=30"], env=env)
    assert (s.train.max_steps, s.train.seed, s.train.log_every, s.train.eval_every) == (
        30,
        2,
        5,
        50,
    )
    prov = s.provenance
    assert prov["train.max_steps"] == "--set"
    assert prov["train.seed"] == "env LRT_TRAIN__SEED"
    assert prov["train.log_every"] == str(config)
    assert prov["train.eval_every"] == "default"
    assert set(prov) == set(s.flat())


def test_values_parse_as_yaml_scalars() -> None:
    s = load_settings(
        None,
        [
            "train.matrix_lr=1e-3",
            "data.max_bytes=1e6",
            "train.compile=true",
            "train.max_steps=null",
            "train.tokens_per_param=10",
            "eval.modes=[init, sequential]",
            "eval.samples_prompts=['a: b']",
        ],
        env={},
    )
    assert s.train.matrix_lr == pytest.approx(1e-3)
    assert s.data.max_bytes == 1_000_000 and isinstance(s.data.max_bytes, int)
    assert s.train.compile is True
    assert s.train.max_steps is None and s.train.tokens_per_param == 10
    assert s.eval.modes == ["init", "sequential"]
    assert s.eval.samples_prompts == ["a: b"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown key 'train.lrr'"),
        ("train.matrx_lr=1", "Did you mean 'train.matrix_lr'"),
        ("trian.seed=1", "Did you mean 'train'"),
        ("model.depth=0", "model.depth = 0 (from --set)"),
        ("model.pathway=sideways", "'none', 'shared', 'layerwise' or 'official'"),
        ("train.max_steps", "KEY=VALUE"),
        ("model.depth.x=1", "has no sub-keys"),
        ("train.variants.lrt.model.pathwy=shared", "Did you mean 'model.pathway'"),
        ("train.variants.lrt.train.seed=1", "expected a variant override"),
        ("train.variants.lrt.strategy.name=bogus", "variant 'lrt': strategy.name"),
        ("train.total_batch_tokens=1000", "multiple of train.device_batch_size"),
    ],
)
def test_bad_overrides_fail_with_a_useful_message(override: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(None, [override], env={})


def test_unknown_key_in_config_file_and_env(tmp_path: Path) -> None:
    config = _write(tmp_path / "p.yaml", {"model": {"dpeth": 3}})
    with pytest.raises(SettingsError, match="Did you mean 'model.depth'"):
        load_settings(config, env={})
    with pytest.raises(SettingsError, match="unknown key 'train.nope'"):
        load_settings(None, env={"LRT_TRAIN__NOPE": "1"})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml", env={})
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SettingsError, match="mapping of sections"):
        load_settings(tmp_path / "list.yaml", env={})


def test_variants_nested_or_dotted_and_overridable(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "p.yaml",
        {
            "model": {"depth": 2, "n_embd": 128, "n_head": 2},
            "train": {
                "variants": {
                    "base": {"model": {"pathway": "none"}},
                    "deep": {
                        "model.pathway": "layerwise",
                        "model.source_layer": 0,
                        "strategy": {"name": "multi_refine"},
                    },
                }
            },
        },
    )
    s = load_settings(config, ["train.variants.deep.strategy.refine_steps=3"], env={})
    assert list(s.train.variants) == ["base", "deep"]  # the file replaces the default variants
    model, strategy = variant_settings(s, "deep")
    assert (model.pathway, model.source_layer, model.depth) == ("layerwise", 0, 2)
    assert (strategy.name, strategy.refine_steps) == ("multi_refine", 3)
    assert s.provenance["train.variants.deep.strategy.refine_steps"] == "--set"
    assert s.provenance["train.variants.deep.model.pathway"] == str(config)
    assert variant_settings(s, "base")[0].pathway == "none"
    with pytest.raises(SettingsError, match="unknown variant 'nope'"):
        variant_settings(s, "nope")
    # A whole mapping replaces the variants.
    s = load_settings(config, ["train.variants={only: {model.pathway: shared}}"], env={})
    assert s.train.variants == {"only": {"model.pathway": "shared"}}


def test_variant_override_is_validated_against_the_shared_model() -> None:
    with pytest.raises(SettingsError, match="source_layer=5 is outside"):
        load_settings(None, ["model.depth=2", "train.variants.lrt.model.source_layer=5"], env={})


def test_paths_resolve_against_the_project(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "params.yaml", {"data": {"raw_dir": "raw", "paths": ["a.txt", "/abs/b"]}}
    )
    s = load_settings(config, env={})
    assert s.project_dir == tmp_path.resolve()
    assert s.data.raw_dir == str(tmp_path.resolve() / "raw")
    assert s.data.paths == [str(tmp_path.resolve() / "a.txt"), "/abs/b"]
    assert s.eval.core_dir == str(tmp_path.resolve() / "data" / "eval_bundle")
    assert s.tracking.uri == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"
    assert (
        load_settings(config, ["tracking.uri=sqlite:////x/y.db"], env={}).tracking.uri
        == "sqlite:////x/y.db"
    )


def test_to_config_builds_lrt_dataclasses() -> None:
    s = load_settings(None, ["model.depth=2", "model.n_embd=64", "model.n_head=2"], env={})
    model, strategy = variant_settings(s, "lrt")
    cfg = model.to_config(vocab_size=300)
    assert (cfg.vocab_size, cfg.n_embd, cfg.head_dim, cfg.pathway) == (300, 64, 32, "shared")
    assert strategy.to_config().name == "interleaved"


def test_every_field_is_documented_and_sections_forbid_extras() -> None:
    for name, cls in SECTIONS.items():
        for field, info in cls.model_fields.items():
            assert info.description, f"{name}.{field} has no docstring"
    with pytest.raises(ValueError, match="Extra inputs"):
        ModelSettings(depht=3)


def test_plain_settings_read_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LRT_MODEL__DEPTH", "3")
    assert Settings().model.depth == 3


def test_repo_params_yaml_is_complete_and_valid() -> None:
    """params.yaml states every setting (it is DVC's single source of truth)."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(data) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert set(data[name]) == set(cls.model_fields), name
    s = load_settings(REPO / "params.yaml", env={})
    assert all(source == str(REPO / "params.yaml") for key, source in s.provenance.items()), [
        k for k, v in s.provenance.items() if v == "default"
    ]


def test_dvc_yaml_params_name_real_settings() -> None:
    """Every `params:` entry of dvc.yaml is a real settings key and the stages read them."""
    from pipeline.steps import STAGE_SECTIONS

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage, spec in dvc["stages"].items():
        body = spec.get("do", spec)
        for key in body.get("params", []):
            key = key.replace("${key}", "lrt")
            node = params
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {stage}: param {key} is not in params.yaml"
                node = node[part]
            assert any(
                key == p or key.startswith(p + ".") or p.startswith(key)
                for p in STAGE_SECTIONS[stage]
            ), (
                stage,
                key,
            )


def test_docs_list_every_setting() -> None:
    doc = (REPO / "docs" / "PIPELINE.md").read_text()
    for name, cls in SECTIONS.items():
        assert f"### `{name}`" in doc, name
        for field in cls.model_fields:
            assert f"| `{field}` |" in doc, f"docs/PIPELINE.md lacks {name}.{field}"


def _has_float(annotation: object) -> bool:
    return annotation is float or any(_has_float(a) for a in typing.get_args(annotation))


def _float_keys() -> list[str]:
    """Every float-valued setting (plain, optional or a list of floats), as `section.field`."""
    keys = []
    for name, cls in SECTIONS.items():
        for field, info in cls.model_fields.items():
            if _has_float(info.annotation):
                keys.append(f"{name}.{field}")
    return keys


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_float_setting_refuses_non_finite_values(value: str) -> None:
    """The class of `train.matrix_lr=.inf` / `model.gamma_init=.nan`: no float setting accepts
    a non-finite value, from --set, the environment or a variant override."""
    keys = _float_keys()
    assert {"train.matrix_lr", "model.gamma_init", "strategy.loss_weights"} <= set(keys)
    for key in keys:
        raw = f"[1.0, {value}]" if key == "strategy.loss_weights" else value
        with pytest.raises(SettingsError, match=key.split(".")[1]) as info:
            load_settings(None, [f"{key}={raw}"], env={})
        assert "finite" in str(info.value), (key, str(info.value))
    env = {"LRT_TRAIN__MATRIX_LR": value}
    with pytest.raises(SettingsError, match=r"train\.matrix_lr .*env LRT_TRAIN__MATRIX_LR"):
        load_settings(None, env=env)
    with pytest.raises(SettingsError, match="gamma_init.*finite"):
        load_settings(None, [f"train.variants.lrt.model.gamma_init={value}"], env={})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.depth=100000", "model.depth = 100000 .*less than or equal to 512"),
        ("model.n_embd=10000000", "model.n_embd"),
        ("train.matrix_lr=2e5", "train.matrix_lr"),
        ("tokenizer.vocab_size=1e9", "tokenizer.vocab_size"),
        ("strategy.loss_weights=[0, 0]", "positive sum"),
        ("strategy.loss_weights=[1, -1]", ">= 0"),
        ("train.max_memory_gb=0", "train.max_memory_gb"),
        ("train.nonfinite_skips=-1", "train.nonfinite_skips"),
    ],
)
def test_out_of_range_values_are_refused_with_the_key(override: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(None, [override], env={})


# ---------------------------------------------------------------------------------------------
# Fields mirrored from lrt/ (issue 17 backbone, the authors' arm) and the other new settings


def test_model_settings_mirror_every_lrt_config_field_and_default() -> None:
    """ModelSettings has every LRTConfig field but the vocabulary and four fixed constants, with
    the same default, and passes each one through (a non-default value of every field reaches the config)."""
    import dataclasses

    from lrt.config import LRTConfig

    fixed = {"vocab_size", "softcap", "rope_base", "rope_len", "mlp_ratio"}  # not settings
    fields = {f.name: f.default for f in dataclasses.fields(LRTConfig) if f.name not in fixed}
    assert set(fields) == set(ModelSettings.model_fields)
    assert {k: ModelSettings.model_fields[k].default for k in fields} == fields
    custom = dict(
        depth=4,
        n_embd=256,
        n_head=4,
        n_kv_head=2,
        window_pattern="SL",
        use_value_embeds=False,
        ve_every_layer=True,
        ve_gate_channels=0,
        use_resid_lambdas=False,
        use_x0_residual=False,
        pad_vocab_size_to=128,
        pathway="official",
        zero_memory=True,
        seq_len=64,
        gamma_init=0.5,
        identity_init=True,
    )
    cfg = ModelSettings(**custom).to_config(vocab_size=300)
    assert cfg == LRTConfig(vocab_size=300, **custom)
    assert cfg.window_sizes == [32, 64, 32, 64] and cfg.padded_vocab_size == 384


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_kv_head=3", "n_kv_head=3 must divide n_head=2"),
        ("model.window_pattern=SXL", "model.window_pattern"),
        ("model.window_pattern=''", "model.window_pattern"),
        ("model.ve_gate_channels=512", "ve_gate_channels=512 exceeds n_embd=128"),
        ("model.zero_memory=true", "zero_memory=true needs a pathway"),
        ("model.pad_vocab_size_to=0", "model.pad_vocab_size_to"),
        ("train.variants.lrt.model.pathway=official", None),  # valid
        ("train.variants.lrt.model.source_layer=0", None),
        ("train.muon_variant=svd", "train.muon_variant"),
        ("train.muon_beta2=1", "train.muon_beta2"),
        ("train.reference_batch_tokens=0", "train.reference_batch_tokens"),
        ("eval.bundle_sha256=abc", "eval.bundle_sha256"),
        ("eval.sequential_memory_mb=0", "eval.sequential_memory_mb"),
        ("data.num_shards=many", "data.num_shards"),
        ("data.source=parquet-url", "parquet-url needs data.base_url and data.final_shard"),
    ],
)
def test_new_settings_are_validated(override: str, message: str | None) -> None:
    base = ["model.depth=2", "model.n_embd=128", "model.n_head=2"]
    if message is None:
        load_settings(None, [*base, override], env={})
        return
    with pytest.raises(SettingsError, match=message):
        load_settings(None, [*base, override], env={})


def test_official_arm_refuses_another_source_layer_in_a_variant() -> None:
    overrides = ["model.depth=2", "train.variants.lrt.model.pathway=official"]
    with pytest.raises(SettingsError, match="variant 'lrt'.*official reads the final layer"):
        load_settings(None, [*overrides, "train.variants.lrt.model.source_layer=0"], env={})


def test_variants_may_set_their_own_budget(tmp_path: Path) -> None:
    """params.yaml's baseline_2x trains the baseline twice as long; only the budget keys of
    train.* may be overridden by a variant, and its budget is validated."""
    from pipeline.config.settings import variant_train_settings

    s = load_settings(REPO / "params.yaml", env={})
    assert variant_settings(s, "baseline_2x") == variant_settings(s, "baseline")
    assert variant_train_settings(s, "baseline_2x").max_steps == 2 * s.train.max_steps
    assert variant_train_settings(s, "lrt") == s.train
    config = _write(
        tmp_path / "p.yaml",
        {
            "train": {
                "max_steps": 10,
                "variants": {
                    "a": {"train": {"max_steps": None, "tokens_per_param": 20}},
                    "b": {"train.max_steps": 30},
                },
            }
        },
    )
    s = load_settings(config, ["train.variants.b.train.max_steps=40"], env={})
    a, b = variant_train_settings(s, "a"), variant_train_settings(s, "b")
    assert (a.max_steps, a.tokens_per_param, b.max_steps) == (None, 20, 40)
    assert s.provenance["train.variants.b.train.max_steps"] == "--set"
    with pytest.raises(SettingsError, match="unknown key 'train.matrix_lr'.*variant override"):
        load_settings(config, ["train.variants.b.train.matrix_lr=1"], env={})
    with pytest.raises(SettingsError, match="variant 'a'.*max_steps or train.tokens_per_param"):
        load_settings(config, ["train.variants.a.train.tokens_per_param=null"], env={})


def test_eval_bundle_settings_reach_their_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval.bundle_url defaults to nanochat's bundle (eval_bundle's own default), the eval
    bundle folder is CORE's default folder, and eval.sequential_memory_mb is the budget."""
    from pipeline.config.sections import EVAL_BUNDLE_URL
    from pipeline.evaluation import bundle as eval_bundle
    from pipeline.evaluation.batching import budget_bytes

    monkeypatch.delenv(eval_bundle.URL_ENV, raising=False)
    s = load_settings(None, env={})
    assert s.eval.bundle_url is None
    assert eval_bundle.settings_url(s) == eval_bundle.DEFAULT_URL == EVAL_BUNDLE_URL
    assert s.eval.core_dir == str(Path.cwd() / eval_bundle.DEFAULT_DIR)
    assert eval_bundle.settings_url(load_settings(None, ["eval.bundle_url=http://x/b.zip"])) == (
        "http://x/b.zip"
    )
    ev = load_settings(None, ["eval.sequential_memory_mb=3"], env={}).eval
    assert budget_bytes(ev, "cpu") == 3 << 20
