"""Spectrum of the feature shift: measures, noise floor, numerics and the `analyze spectrum` command."""

import json
import math
import re

import numpy as np
import pytest

from adaptertune.analysis.spectrum import noise_floor, shared_directions, spectrum, tw1_quantile
from adaptertune.cli import main
from adaptertune.errors import UserError


def planted(rng, k, n, d, noise, strength=3.0):
    """A rank-k shift (n, d) whose directions sit `strength`..2·`strength` times above the
    detection limit σ·(NP)^¼, plus i.i.d. N(0, noise²) entries; absolute strengths when noise = 0."""
    big, small = max(n - 1, d), min(n - 1, d)
    unit = noise if noise > 0 else 1.0
    theta = unit * (big * small) ** 0.25 * np.linspace(2 * strength, strength, k)
    u = np.linalg.qr(rng.standard_normal((n, k)))[0]
    v = np.linalg.qr(rng.standard_normal((d, k)))[0]
    return (u * theta) @ v.T + noise * rng.standard_normal((n, d))


# -- measures, by hand ---------------------------------------------------------------------------------

def test_measures_match_hand_computation():
    shift = np.zeros((6, 4))
    shift[0, 0], shift[1, 1], shift[2, 2] = 3.0, 2.0, 1.0  # singular values 3, 2, 1, 0
    s = spectrum(shift, center=False)
    np.testing.assert_allclose(s.singular_values, [3, 2, 1, 0], atol=1e-12)
    np.testing.assert_allclose(s.energy, np.array([9, 4, 1, 0]) / 14, atol=1e-12)
    np.testing.assert_allclose(s.cumulative, np.array([9, 13, 14, 14]) / 14, atol=1e-12)
    np.testing.assert_allclose(s.tail_energy, [14, 5, 1, 0, 0], atol=1e-12)
    p = np.array([3, 2, 1]) / 6
    assert s.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert s.participation_ratio == pytest.approx(14 ** 2 / (81 + 16 + 1))
    assert s.stable_rank == pytest.approx(14 / 9)
    assert s.rank_at == {0.9: 2, 0.95: 3, 0.99: 3}


def test_centering_removes_a_constant_offset_only_when_asked():
    offset = np.ones((50, 8)) * np.arange(8)  # every sample shifted by the same vector: rank 1 uncentered
    assert spectrum(offset, center=False).singular_values[0] > 1
    assert spectrum(offset).singular_values.max() < 1e-12


def test_tracy_widom_quantiles_match_published_values():
    assert tw1_quantile(0.95) == pytest.approx(0.9793, abs=1e-4)  # Tracy & Widom (1996), Johnstone (2001)
    assert tw1_quantile(0.99) == pytest.approx(2.0234, abs=1e-4)


# -- the noise floor ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n, d, noise", [
    (1, 4000, 64, 1.0),      # n >> d
    (3, 2000, 128, 0.01),    # tiny noise level: only ratios matter
    (8, 300, 300, 1.0),      # square
    (5, 150, 400, 2.0),      # n < d
    (4, 60, 768, 1.0),       # n << d
    (6, 500, 40, 0.0),       # no noise at all: the exact rank
])
def test_planted_rank_is_recovered_as_significant_directions(k, n, d, noise):
    rng = np.random.default_rng(k * 1000 + n)
    shift = planted(rng, k, n, d, noise)
    s = spectrum(shift)
    assert s.significant == k
    assert s.recommended_rank <= k
    frozen = rng.standard_normal((n, d))  # the same through two feature matrices
    assert spectrum(frozen, frozen + shift).significant == k


@pytest.mark.parametrize("n, d", [(4000, 64), (300, 300), (80, 500)])
def test_pure_noise_has_no_significant_direction(n, d):
    s = spectrum(np.random.default_rng(n + d).standard_normal((n, d)))
    assert s.significant == 0 and s.recommended_rank == 0
    assert s.noise.white


def test_false_alarm_rate_matches_alpha():
    rng = np.random.default_rng(0)
    draws = [rng.standard_normal((120, 40)) for _ in range(300)]
    spectra = {a: [spectrum(x, alpha=a) for x in draws] for a in (0.01, 0.2)}
    rate = {a: np.mean([s.noise.counts["white"] > 0 for s in v]) for a, v in spectra.items()}
    assert rate[0.01] <= 0.04           # nominal 0.01
    assert 0.1 <= rate[0.2] <= 0.3      # the white test is calibrated, not merely conservative
    # the count also needs the edge-spacing test to see a gap: at most as often (conservative)
    assert all(np.mean([s.significant > 0 for s in v]) <= rate[a] for a, v in spectra.items())


def test_directions_below_the_detection_limit_do_not_count():
    rng = np.random.default_rng(3)
    weak = planted(rng, 3, 2000, 100, 1.0, strength=0.5)  # below the BBP transition
    assert spectrum(weak).significant == 0


def test_heteroscedastic_noise_is_flagged_not_white():
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((1024, 256)) * rng.lognormal(0, 0.5, (1024, 1))  # per-sample noise level
    s = spectrum(noise)
    assert not s.noise.white and s.noise.bulk_ks > 0.1
    assert spectrum(rng.standard_normal((1024, 256))).noise.white


def test_noise_floor_on_given_singular_values_is_scale_free():
    s = np.linalg.svd(planted(np.random.default_rng(1), 2, 500, 50, 1.0), compute_uv=False)
    a, b = noise_floor(s, 500, 50), noise_floor(s * 1e-7, 500, 50)
    assert a.significant == b.significant == 2
    assert b.sigma == pytest.approx(a.sigma * 1e-7)


# -- numerics ----------------------------------------------------------------------------------------------

def graded(rng, n, d, low):
    m = min(n, d)
    u = np.linalg.qr(rng.standard_normal((n, m)))[0]
    v = np.linalg.qr(rng.standard_normal((d, m)))[0]
    return (u * np.logspace(0, low, m)) @ v.T


@pytest.mark.parametrize("n, d, low", [(1000, 80, -2), (1000, 60, -7), (40, 300, -7)])
def test_singular_values_agree_with_numpy_svd(n, d, low):
    """Down to σ_min/σ_1 = 1e-7, where a plain Gram route would be off by ~1e-3."""
    shift = graded(np.random.default_rng(n), n, d, low)
    ref = np.linalg.svd(shift, compute_uv=False)
    got = spectrum(shift, center=False).singular_values
    assert got.shape == (min(n, d),)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_wide_matrix_with_centering_has_rank_at_most_n_minus_1():
    rng = np.random.default_rng(2)
    frozen, adapted = rng.standard_normal((30, 200)), rng.standard_normal((30, 200))
    s = spectrum(frozen, adapted)
    delta = adapted - frozen
    ref = np.linalg.svd(delta - delta.mean(0), compute_uv=False)
    np.testing.assert_allclose(s.singular_values, ref, rtol=1e-6, atol=1e-9 * ref[0])
    assert s.singular_values.shape == (30,) and s.singular_values[-1] < 1e-9 * ref[0]


def test_invariant_to_rotation_and_scaling_of_the_feature_space():
    rng = np.random.default_rng(4)
    n, d = 800, 64
    frozen = rng.standard_normal((n, d))
    adapted = frozen + planted(rng, 3, n, d, 0.5)
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    base = spectrum(frozen, adapted)
    rotated = spectrum(frozen @ q, adapted @ q)
    scaled = spectrum(frozen * 1e-3, adapted * 1e-3)
    np.testing.assert_allclose(rotated.singular_values, base.singular_values, rtol=1e-9)
    np.testing.assert_allclose(scaled.singular_values, base.singular_values * 1e-3, rtol=1e-9)
    np.testing.assert_allclose(scaled.tail_energy, base.tail_energy * 1e-6, rtol=1e-9)
    for other in (rotated, scaled):
        assert other.significant == base.significant == 3
        assert other.recommended_rank == base.recommended_rank
        assert other.effective_rank == pytest.approx(base.effective_rank, rel=1e-9)
        assert other.rank_at == base.rank_at
        np.testing.assert_allclose(other.energy, base.energy, rtol=1e-9, atol=1e-15)


def test_extreme_scales_do_not_overflow():
    shift = planted(np.random.default_rng(6), 2, 300, 30, 1.0)
    for scale in (1e-200, 1e200):
        s = spectrum(shift * scale)
        assert s.significant == 2
        np.testing.assert_allclose(s.singular_values / scale, spectrum(shift).singular_values, rtol=1e-12)


def test_zero_shift_gives_rank_zero_everywhere():
    frozen = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    s = spectrum(frozen, frozen.copy())
    assert not s.singular_values.any() and not s.tail_energy.any() and not s.energy.any()
    assert s.significant == s.recommended_rank == 0
    assert s.effective_rank == s.participation_ratio == s.stable_rank == 0
    assert s.rank_at == {0.9: 0, 0.95: 0, 0.99: 0}
    json.dumps(s.to_dict(), allow_nan=False)  # JSON-safe: no NaN from 0/0


@pytest.mark.parametrize("where, value, name", [("frozen", np.nan, "frozen"), ("adapted", np.inf, "adapted")])
def test_non_finite_input_is_one_clear_error(where, value, name):
    frozen, adapted = np.zeros((10, 5)), np.ones((10, 5))
    (frozen if where == "frozen" else adapted)[3, 2] = value
    with pytest.raises(UserError, match=f"{name} has 1 NaN/inf") as e:
        spectrum(frozen, adapted)
    assert "\n" not in str(e.value)


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="differ in shape"):
        spectrum(np.zeros((10, 5)), np.zeros((10, 6)))
    with pytest.raises(UserError, match="matrix"):
        spectrum(np.zeros(10))


def test_inputs_are_not_modified():
    shift = np.random.default_rng(0).standard_normal((20, 5))
    before = shift.copy()
    spectrum(shift)
    np.testing.assert_array_equal(shift, before)


def test_to_dict_is_json_safe_with_the_contract_keys():
    d = spectrum(planted(np.random.default_rng(8), 2, 200, 20, 1.0)).to_dict()
    json.dumps(d, allow_nan=False)
    for key in ("n", "d", "singular_values", "effective_rank", "participation_ratio", "stable_rank",
                "rank90", "rank95", "rank99", "significant", "recommended_rank", "noise_sigma", "noise_white"):
        assert key in d
    assert d["significant"] == 2 and len(d["singular_values"]) == 20


# -- directions shared across seeds ---------------------------------------------------------------------

def seed_shifts(rng, seeds=3, n=1000, d=48, shared=(3.0, 2.0, 1.5), own=12, own_scale=1.0):
    """Shifts of `seeds` runs: a part all seeds share (one direction per entry of `shared`, that
    standard deviation per sample) plus each seed's own rank-`own` part (sd `own_scale` per direction)."""
    v = np.linalg.qr(rng.standard_normal((d, d)))[0]
    common = (rng.standard_normal((n, len(shared))) * shared) @ v[:, :len(shared)].T
    return np.stack([common + own_scale * rng.standard_normal((n, own)) @ np.linalg.qr(
        rng.standard_normal((d, own)))[0].T for _ in range(seeds)])


def test_shared_directions_count_what_the_seeds_agree_on_not_what_each_run_uses():
    shifts = seed_shifts(np.random.default_rng(0))
    assert shared_directions(shifts).count == 3
    assert spectrum(shifts[0]).significant == 15  # the white-noise floor counts every direction a run uses


def test_shared_directions_need_the_shared_part_to_outweigh_the_seed_part():
    rng = np.random.default_rng(1)
    # ICC along each direction = s² / (s² + own²) with own = 1 per direction: 0.9, 0.69, 0.2
    result = shared_directions(seed_shifts(rng, shared=(3.0, 1.5, 0.5), own=0, own_scale=0) +
                               np.stack([rng.standard_normal((1000, 48)) for _ in range(3)]))
    assert result.count == 2
    assert result.icc[:2] == pytest.approx([0.9, 0.69], abs=0.06)


def test_shared_directions_of_independent_runs_are_rarely_any():
    rng = np.random.default_rng(2)
    false = sum(shared_directions(seed_shifts(rng, n=400, shared=(), own=8)).count > 0 for _ in range(100))
    assert false <= 3


def test_shared_directions_reject_bad_input():
    with pytest.raises(UserError):
        shared_directions(np.zeros((1, 100, 4)))
    with pytest.raises(UserError):
        shared_directions(np.full((2, 100, 4), np.nan))


# -- the command -----------------------------------------------------------------------------------------

N, D = 256, 48


def features(rng, frozen, k, blocks=0):
    shift = planted(rng, k, N, D, 0.05) if k else np.zeros((N, D))
    out = {"frozen": frozen, "adapted": (frozen + shift).astype(np.float32),
           "labels": np.arange(N) % 10, "indices": np.arange(N)}
    for b in range(blocks):
        out[f"frozen.block{b}"] = frozen
        out[f"adapted.block{b}"] = (frozen + planted(rng, b + 1, N, D, 0.05)).astype(np.float32)
    return out


@pytest.fixture
def sweep(make_run):
    rng = np.random.default_rng(0)
    frozen = rng.standard_normal((N, D)).astype(np.float32)
    common = dict(dataset="planted", backbone="vit_nano")
    for rank, k in ((2, 2), (4, 3)):
        for seed in (0, 1):
            make_run(method="adapter", rank=rank, seed=seed, features=features(rng, frozen, k, blocks=2 * (rank == 4 and seed == 0)), **common)
    make_run(method="head", features=features(rng, frozen, 0), **common)
    corrupt = make_run(method="adapter", rank=8, features=features(rng, frozen, 1), **common)
    (corrupt / "features.safetensors").write_bytes(b"not a safetensors file")
    make_run(method="adapter", rank=16, **common)  # no features saved
    bad = features(rng, frozen, 1)
    bad["adapted"][0, 0] = np.nan
    make_run(method="adapter", rank=32, features=bad, **common)
    return corrupt.parent


def plain(text: str) -> str:
    """Run ids without their config key: planted-vit_nano-adapter-r2-1a2b3c4d-s0 -> ...-r2-s0."""
    return re.sub(r"-[0-9a-f]{8}(?=-s\d|\b)", "", text)


def test_command_prints_table_writes_files_and_names_skipped_runs(sweep, capsys):
    assert main(["analyze", "spectrum", str(sweep)]) == 0
    out = plain(capsys.readouterr().out)
    assert "eff.rank" in out and "rank90" in out and "signif." in out and "rec.rank" in out
    assert "planted-vit_nano-adapter-r2-s0" in out and "planted-vit_nano-head-s0" in out
    assert "skipped planted-vit_nano-adapter-r8-s0" in out and "unreadable" in out
    assert "skipped planted-vit_nano-adapter-r16-s0" in out and "no features.safetensors" in out
    assert "skipped planted-vit_nano-adapter-r32-s0" in out and "NaN/inf" in out
    folder = sweep / "analysis"
    for name in ("spectrum.json", "spectrum.csv", "spectrum.png", "spectrum.pdf", "spectrum_blocks.png"):
        assert (folder / name).stat().st_size > 0, name

    report = json.loads(plain((folder / "spectrum.json").read_text()))
    runs = {r["run"]: r for r in report["runs"]}
    assert len(runs) == 5
    r2 = runs["planted-vit_nano-adapter-r2-s0"]
    for key in ("run", "method", "rank", "seed", "n", "d", "effective_rank", "rank90", "rank95", "rank99",
                "significant", "recommended_rank", "utilization"):
        assert key in r2
    assert (r2["n"], r2["d"], r2["significant"]) == (N, D, 2)
    assert runs["planted-vit_nano-adapter-r4-s1"]["significant"] == 3
    assert r2["utilization"] == pytest.approx(r2["effective_rank"] / 2)
    head = runs["planted-vit_nano-head-s0"]
    assert head["significant"] == 0 and head["effective_rank"] == 0 and head["utilization"] is None
    blocks = runs["planted-vit_nano-adapter-r4-s0"]["blocks"]
    assert [(b["block"], b["significant"]) for b in blocks] == [(0, 1), (1, 2)]
    assert {s["run"] for s in report["skipped"]} == {
        "planted-vit_nano-adapter-r8-s0", "planted-vit_nano-adapter-r16-s0", "planted-vit_nano-adapter-r32-s0"}
    by_rank = {(b["label"], b["rank"]): b for b in report["by_rank"]}
    assert by_rank[("adapter-r4", 4)]["runs"] == 2 and by_rank[("adapter-r4", 4)]["significant"] == 3
    # the two seeds of each rank planted unrelated directions: nothing is shared
    shared = {g["group"]: g for g in report["shared"]}
    assert set(shared) == {"planted/vit_nano adapter-r2", "planted/vit_nano adapter-r4"}
    assert all(g["shared"] == 0 and g["shared_seeds"] == 2 for g in shared.values())

    lines = (folder / "spectrum.csv").read_text().splitlines()
    assert lines[0].startswith("run,") and len(lines) == 1 + 5 + 2  # header, runs, blocks


def test_command_out_option_and_markdown(sweep, tmp_path, capsys):
    from adaptertune.analysis.spectrum_runs import analyze_runs

    out = tmp_path / "elsewhere"
    assert main(["analyze", "spectrum", str(sweep), "--out", str(out), "--alpha", "0.05"]) == 0
    assert json.loads((out / "spectrum.json").read_text())["options"]["alpha"] == 0.05
    md = plain(analyze_runs(sweep, out).markdown())
    assert md.startswith("## ") and "](spectrum.png)" in md and "| planted-vit_nano-adapter-r2-s0 |" in md
    assert "planted-vit_nano-adapter-r8-s0" in md  # skipped runs are listed


def test_command_with_nothing_to_analyse_is_a_user_error(make_run, tmp_path, capsys):
    make_run(method="adapter", rank=4)  # complete, but no features
    assert main(["analyze", "spectrum", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "no run with features" in err and err.count("\n") == 1


def test_rounding_of_float32_features_is_not_counted_as_directions():
    """A rank-2 shift added to float32 features: the difference's rounding errors scale with the
    features (not white); without the inputs' resolution they passed as 4 extra directions here, and as
    20 on the float32 features of a rank-1 adapter on vit_nano."""
    rng = np.random.default_rng(0)
    frozen = (3 * rng.standard_normal((1000, 48))).astype(np.float32)
    shift = rng.standard_normal((1000, 2)) @ rng.standard_normal((2, 48))
    adapted = (frozen + shift).astype(np.float32)
    assert spectrum(frozen, adapted).significant == 2
    assert spectrum(frozen.astype(np.float64), frozen + shift).significant == 2
    assert spectrum(frozen, frozen.copy()).significant == 0
