"""diffusers AutoencoderKL adapter (exact parity with diffusers' own calls, GQ consistency,
offline rebuild, clear errors) and the bits-back rate analysis (against numpy float64)."""

import json
import math

import diffusers  # extra [diffusers], installed by make test: fails if missing
import numpy as np
import pytest
import torch

from gaussquant.cli import main as cli_main  # noqa: E402
from gaussquant.errors import GaussquantError  # noqa: E402
from gaussquant.models import diffusers_vae as dv  # noqa: E402
from gaussquant.quantizers.gaussian_quant import GaussianQuant  # noqa: E402
from gaussquant.rate_analysis import analyse  # noqa: E402


def tiny_vae(channels: int, quant_conv: bool = True, **config) -> "diffusers.AutoencoderKL":
    """A random AutoencoderKL (f = 2) whose logvar runs past both ends of the [-30, 20] clamp."""
    torch.manual_seed(channels + 100 * quant_conv)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=channels,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
        **config,
    )
    last = vae.quant_conv if quant_conv else vae.encoder.conv_out
    with torch.no_grad():
        last.bias[channels] = -45.0  # below the clamp
        last.bias[channels + 1] = 35.0  # above it
    return vae.eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


@pytest.mark.parametrize("channels", [4, 16])
@pytest.mark.parametrize("quant_conv", [True, False])
def test_adapter_equals_diffusers(tmp_path, images, channels, quant_conv):
    ref = tiny_vae(channels, quant_conv)
    ref.save_pretrained(tmp_path / "vae")
    vae = dv.load_vae(str(tmp_path / "vae"))
    for k, v in ref.state_dict().items():
        assert torch.equal(vae.state_dict()[k], v), k
    enc, dec = dv.DiffusersEncoder(vae), dv.DiffusersDecoder(vae)
    assert (enc.quant_conv is None) == (dec.post_quant_conv is None) == (not quant_conv)
    with torch.no_grad():
        z = enc(images)
        dist = vae.encode(images).latent_dist
        assert z.shape == (2, 2 * channels, 16, 16)
        assert torch.equal(z[:, :channels], dist.mean)
        assert torch.equal(z[:, channels:], dist.logvar)
        assert z[:, channels].max() == -30.0 and z[:, channels + 1].min() == 20.0  # clamped
        latent = dist.mean
        assert torch.equal(dec(latent), vae.decode(latent).sample)
    assert dv.downsampling_factor(dv.plain_config(vae)) == 2


def byo_cfg(tiny_cfg, vae, dim, codebook_size=2**8):
    return dv.byo_config(tiny_cfg, dv.plain_config(vae), codebook_size, dim)


@pytest.mark.parametrize("channels,dim", [(4, 4), (16, 8)])
def test_gq_tokens_decode_like_vae_decode(tiny_cfg, images, channels, dim):
    vae = tiny_vae(channels)
    cfg = byo_cfg(tiny_cfg, vae, dim)
    model = dv.diffusers_autoencoder(vae, cfg, "tdc")
    assert model.bottleneck.latent_channels == channels and model.bottleneck.dim == dim
    assert model.bottleneck.tdc.cfg == cfg.tdc and cfg.tdc.codebook_size == 2**8
    gq = GaussianQuant(channels, 2**8, dim)
    model.bottleneck = gq
    model.eval()
    with torch.no_grad():
        q = model.encode(images)
        dist = vae.encode(images).latent_dist
        assert torch.equal(q.indices, gq.encode(torch.cat([dist.mean, dist.logvar], 1)))
        codewords = gq.indices_to_codes(q.indices)
        assert torch.equal(q.z_q, codewords)
        expected = vae.decode(codewords).sample  # codewords are raw latents
        assert torch.equal(model.decode_indices(q.indices), expected)
        assert torch.equal(model(images)[0], expected)
    assert q.indices.shape == (2, channels // dim, 16, 16)
    assert len(q.indices.unique()) > 10  # a real spread of codes, not one
    assert model.last_layer() is vae.decoder.conv_out.weight  # adaptive GAN weight's layer


def test_raw_scaled_conversions():
    z = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    sd3 = {"scaling_factor": 1.5305, "shift_factor": 0.0609}
    assert torch.equal(dv.raw_to_scaled(z, sd3), (z - 0.0609) * 1.5305)
    torch.testing.assert_close(dv.scaled_to_raw(dv.raw_to_scaled(z, sd3), sd3), z)
    sd15 = {"scaling_factor": 0.18215, "shift_factor": None}
    assert torch.equal(dv.raw_to_scaled(z, sd15), z * 0.18215)
    mean, std = torch.linspace(-1, 1, 16, dtype=torch.float64), torch.linspace(0.5, 2, 16)
    per_channel = {
        "scaling_factor": 0.5,
        "latents_mean": mean.tolist(),
        "latents_std": std.tolist(),
    }
    expected = (z - mean.view(1, -1, 1, 1)) * 0.5 / std.double().view(1, -1, 1, 1)
    torch.testing.assert_close(dv.raw_to_scaled(z, per_channel), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(dv.scaled_to_raw(expected, per_channel), z, rtol=1e-12, atol=1e-14)


def test_description_rebuilds_offline(tiny_cfg, images):
    vae = tiny_vae(16, quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609)
    cfg = byo_cfg(tiny_cfg, vae, 4, 2**12)
    model = dv.diffusers_autoencoder(vae, cfg, "tdc")
    desc = json.loads(json.dumps(dv.describe(vae, "some/hub-id:vae")))  # plain data
    assert desc["spec"] == "some/hub-id:vae" and desc["config"]["shift_factor"] == 0.0609
    assert desc["config"]["use_quant_conv"] is False
    assert desc["weights_sha256"] == dv.weights_sha256(vae) != dv.weights_sha256(tiny_vae(16))
    rebuilt = dv.autoencoder_from_description(desc, cfg, "tdc")
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.bottleneck.tdc.cfg == cfg.tdc and rebuilt.bottleneck.dim == 4
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt.encoder(images), model.encoder(images))
        z = torch.randn(1, 16, 4, 4)
        assert torch.equal(rebuilt.decode(z), vae.decode(z).sample)
    with pytest.raises(GaussquantError, match="16 latent channels, the config 4"):
        dv.diffusers_autoencoder(vae, byo_cfg(tiny_cfg, tiny_vae(4), 4), "tdc")
    with pytest.raises(GaussquantError, match="a diffusers VAE is a Gaussian VAE"):
        dv.diffusers_autoencoder(vae, cfg, "fsq")


# ----------------------------------------------------------------------------- rates
def _numpy_rates(mu: np.ndarray, logvar: np.ndarray, m: int):
    """Per-token bits and c1 = max |mu sigma|, token k = channels k, k + C/m, ... (docs/method.md §1)."""
    kl = (mu**2 + np.exp(logvar) - 1 - logvar) / (2 * np.log(2))
    musig = np.abs(mu * np.exp(0.5 * logvar))
    t = mu.shape[1] // m
    bits = np.stack([kl[:, k::t].sum(1) for k in range(t)], 1).ravel()
    c1 = np.stack([musig[:, k::t].max(1) for k in range(t)], 1).ravel()
    return kl, bits, c1


def test_rate_figures_equal_numpy_float64():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(3, 16, 4, 4, generator=g) * torch.linspace(0.1, 3, 16).view(1, -1, 1, 1)
    logvar = torch.randn(3, 16, 4, 4, generator=g) - 2.0
    r = analyse(mu, logvar, factor=8, bpp=0.25).report
    mu64, lv64 = mu.double().numpy(), logvar.double().numpy()
    kl = _numpy_rates(mu64, lv64, 1)[0]
    assert r["per_dim"]["mean"] == pytest.approx(kl.mean(), rel=1e-12)
    assert r["per_dim"]["p99"] == pytest.approx(np.percentile(kl, 99), rel=1e-12)
    assert r["per_dim"]["channel_mean"] == pytest.approx(kl.mean((0, 2, 3)).tolist(), rel=1e-12)
    assert r["per_position"]["p50"] == pytest.approx(np.median(kl.sum(1)), rel=1e-12)
    assert [d["m"] for d in r["dims"]] == [1, 2, 4, 8, 16]
    # 0.25 bpp at f = 8, C = 16: 16 bits per position, so log2 K = m for every m
    assert [(c["m"], c["log2k"]) for c in r["candidates"]] == [(m, m) for m in (1, 2, 4, 8, 16)]
    for d, cand in zip(r["dims"], r["candidates"]):
        m = d["m"]
        _, bits, c1 = _numpy_rates(mu64, lv64, m)
        assert d["tokens"] == bits.size == 3 * 16 * 16 // m
        for p in (0, 1, 50, 99, 100):
            assert d[f"p{p}"] == pytest.approx(np.percentile(bits, p), rel=1e-12)
        exceed = [float((bits > k).mean()) for k in range(1, 21)]
        assert d["exceed_share_by_log2k"] == exceed
        assert cand["exceed_share"] == exceed[m - 1]
        t = (m - bits) * np.log(2)
        bound = np.minimum(np.exp(-np.exp(t) * np.sqrt(2 / np.pi) * np.exp(-c1 - 0.5)), 1)
        assert cand["failure_bound_mean"] == pytest.approx(bound.mean(), rel=1e-12)
        assert cand["bpp"] == 0.25 and cand["codebook_size"] == 2**m
    best = min(r["candidates"], key=lambda c: (c["exceed_share"], c["failure_bound_mean"]))
    assert r["recommendation"] == best and r["fits"] == (best["exceed_share"] <= 0.01)
    assert 0 < best["exceed_share"] < 1  # the data straddles the threshold


def test_rate_statements():
    zeros = torch.zeros(2, 16, 8, 8)
    # sigma^2 = e^-0.5: 0.077 bits per dim, 1.23 bits per 16-dim token: fits every K
    fits = analyse(zeros, zeros - 0.5, factor=8, bpp=0.25).report
    assert fits["fits"] and fits["statement"].startswith("GQ fits at 0.25 bpp")
    assert fits["recommendation"]["exceed_share"] == 0.0
    # 1.9 bits per dim (30.4 per 16-dim token): too much for 16 bits per position; log2 K =
    # ceil(1.9 m) fits, i.e. 0.5 bpp for m = 1, 2, 4, 8 (m = 16 would need K = 2^31)
    mu = torch.full_like(zeros, math.sqrt(2 * 1.9 * math.log(2)))
    over = analyse(mu, zeros, factor=8, bpp=0.25).report
    assert not over["fits"] and over["recommendation"]["exceed_share"] == 1.0
    assert "no codebook fits" in over["statement"] and "TDC" in over["statement"]
    needed = min(d["bpp_needed"] for d in over["dims"] if d["bpp_needed"] is not None)
    assert needed == 0.5 and "at least 0.5 bpp" in over["statement"]
    # SD-VAE-like posterior (sigma ~ 1e-3, |mu| ~ 5): ~23 bits per dim, no sane K fits
    mu, logvar = torch.full_like(zeros, 5.0), torch.full_like(zeros, -14.0)
    sd = analyse(mu, logvar, factor=8, bpp=0.25).report
    assert not sd["fits"] and all(d["log2k_needed"] is None for d in sd["dims"])
    assert sd["statement"].startswith("No codebook of sane size") and "TDC" in sd["statement"]
    odd = analyse(zeros, zeros - 0.5, factor=8, bpp=0.3).report
    assert odd["candidates"] == [] and odd["recommendation"] is None
    assert "not reachable" in odd["statement"]


def test_rate_cli_on_prepared_data(tmp_path, tiny_data, capsys):
    from gaussquant.data import PreparedDataset

    vae = tiny_vae(4)
    vae.save_pretrained(tmp_path / "pipe" / "vae")  # a pipeline folder: vae/ found by itself
    prefix = tmp_path / "out" / "rate"
    argv = ["rate", "--vae", str(tmp_path / "pipe"), "--data", str(tiny_data)]
    argv += ["--out", str(prefix), "--bpp", "2", "--batch-size", "5", "--no-progress"]
    assert cli_main(argv + ["--device", "cpu"]) == 0
    r = json.loads((tmp_path / "out" / "rate.json").read_text())
    assert r["images"] == 16 and r["factor"] == 2 and r["latent_shape"] == [16, 16]
    assert r["latent_channels"] == 4 and r["bits_per_position"] == 8.0
    # 8 bits per position over C = 4: log2 K = 2 m for m = 1, 2, 4
    assert [(c["m"], c["log2k"]) for c in r["candidates"]] == [(1, 2), (2, 4), (4, 8)]
    rec = r["recommendation"]
    assert rec["exceed_share"] == min(c["exceed_share"] for c in r["candidates"])
    ties = [c for c in r["candidates"] if c["exceed_share"] == rec["exceed_share"]]
    assert rec["failure_bound_mean"] == min(c["failure_bound_mean"] for c in ties)
    dim = next(d for d in r["dims"] if d["m"] == rec["m"])
    assert rec["exceed_share"] == dim["exceed_share_by_log2k"][rec["log2k"] - 1]
    assert (4 // rec["m"]) * rec["log2k"] / 2**2 == 2.0 == rec["bpp"]
    assert r["fits"] == (rec["exceed_share"] <= r["fit_share"])
    # the numbers are the posterior of these images
    x = torch.stack([PreparedDataset(tiny_data, "val")[i] for i in range(16)])
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    kl = (dist.mean.double() ** 2 + dist.logvar.double().exp() - 1 - dist.logvar.double()) / (
        2 * math.log(2)
    )
    assert r["per_dim"]["mean"] == pytest.approx(kl.mean().item(), rel=1e-6)
    md = (tmp_path / "out" / "rate.md").read_text()
    assert r["statement"] in md and "| 4 | 1 |" in md
    assert (tmp_path / "out" / "rate.png").read_bytes()[:4] == b"\x89PNG"
    assert r["statement"] in capsys.readouterr().out


# ----------------------------------------------------------------------------- errors
def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_folder_is_one_line_error(tmp_path, capsys, tiny_data):
    missing = tmp_path / "nowhere" / "vae"
    with pytest.raises(GaussquantError) as err:
        dv.load_vae(str(missing))
    assert str(missing) in _one_line(err) and "save_pretrained" in str(err.value)
    argv = ["rate", "--vae", str(missing), "--data", str(tiny_data), "--out", str(tmp_path / "r")]
    assert cli_main(argv) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr.startswith("gaussquant rate: error: --vae") and "\n" not in stderr
    assert not (tmp_path / "r.json").exists()


def test_unsupported_class_and_offline_hub_are_one_line_errors(tmp_path):
    unet = diffusers.UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    unet.save_pretrained(tmp_path / "unet")  # diffusers itself would load it with random weights
    with pytest.raises(GaussquantError) as err:
        dv.load_vae(str(tmp_path / "unet"))
    assert "'UNet2DModel', not an AutoencoderKL" in _one_line(err)
    with pytest.raises(GaussquantError) as err:
        dv.load_vae("nobody-here/no-such-vae:vae", local_files_only=True)
    assert "nobody-here/no-such-vae:vae" in _one_line(err) and "save_pretrained(DIR)" in str(
        err.value
    )


def test_spec_forms_and_missing_weights(tmp_path):
    tiny_vae(4).save_pretrained(tmp_path / "pipe" / "vae")
    assert dv.parse_spec(str(tmp_path / "pipe")) == (str(tmp_path / "pipe"), "vae")
    assert dv.parse_spec(f"{tmp_path / 'pipe'}:vae") == (str(tmp_path / "pipe"), "vae")
    assert dv.parse_spec("org/model:vae") == ("org/model", "vae")
    assert dv.parse_spec("org/model") == ("org/model", None)
    vae = dv.load_vae(f"{tmp_path / 'pipe'}:vae")
    assert vae.config.latent_channels == 4
    (tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(GaussquantError) as err:
        dv.load_vae(str(tmp_path / "pipe"))
    assert "cannot load the weights" in _one_line(err)
