"""Backbones and discriminator (docs/method.md §5): parameter counts of the paper configurations (docs/method.md §5
values and closed forms), f8 latent shapes, the ViT output clamp and its gradient, ActNorm's
data-dependent init and exact resume, and errors for impossible configurations."""

from pathlib import Path

import pytest
import torch

from gaussquant.config import load_config
from gaussquant.errors import GaussquantError
from gaussquant.models import BACKBONES, build_backbone
from gaussquant.models.discriminator import ActNorm, DiscriminatorConfig, NLayerDiscriminator
from gaussquant.models.unet import UNetConfig, UNetDecoder, UNetEncoder
from gaussquant.models.vit import ViTConfig, ViTDecoder, ViTEncoder, clamp_output

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")
SMALL_UNET = UNetConfig(ch=32, ch_mult=[1, 2, 2, 4], num_res_blocks=1, num_groups=8)
SMALL_VIT = ViTConfig(width=64, layers=2, heads=4, image_size=32)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- closed forms


def _conv(k, a, b):
    return k * k * a * b + b


def _res(a, b):
    return 2 * a + _conv(3, a, b) + 2 * b + _conv(3, b, b) + (_conv(1, a, b) if a != b else 0)


def _attn(c):
    return 2 * c + 4 * (c * c + c)  # GroupNorm + q, k, v, proj 1x1 convs


def unet_counts(ch, ch_mult, nrb, c_enc_out, c_dec_in):
    """Encoder and decoder parameters of the docs/method.md §5 structure, attention at the last level."""
    chans, last = [ch * m for m in ch_mult], len(ch_mult) - 1
    enc, c = _conv(3, 3, ch), ch
    for i, co in enumerate(chans):
        enc += _res(c, co) + (nrb - 1) * _res(co, co) + (nrb * _attn(co) if i == last else 0)
        enc += _conv(3, co, co) if i != last else 0
        c = co
    enc += 2 * _res(c, c) + 2 * c + _conv(3, c, c_enc_out)
    dec = _conv(3, c_dec_in, c) + 2 * _res(c, c)
    for i in reversed(range(len(chans))):
        co = chans[i]
        dec += _res(c, co) + nrb * _res(co, co) + ((nrb + 1) * _attn(co) if i == last else 0)
        dec += _conv(3, co, co) if i != 0 else 0
        c = co
    return enc, dec + 2 * c + _conv(3, c, 3)


def vit_counts(patch, w, layers, mlp, tokens, c_enc_out, c_dec_in, head):
    block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * mlp + mlp) + (mlp * w + w)
    trunk = tokens * w + 4 * w + layers * block  # positions, ln_pre, ln_post, blocks
    enc = 3 * patch**2 * w + trunk + w * c_enc_out + c_enc_out
    dec = c_dec_in * w + w + trunk + w * head + head + head * 3 * patch**2 + 3 * patch**2
    return enc, dec


# ----------------------------------------------------------------------------- parameter counts


def test_unet_paper_parameter_counts():
    """docs/method.md §5: about 35.3 M (encoder, 2C = 32 outputs) and 51.6 M (decoder, C = 16 inputs)."""
    cfg = UNetConfig()
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.num_groups) == (128, [1, 2, 4, 4], 2, 32)
    with META:
        enc, dec = build_backbone("unet", cfg, 32, 16)
    assert n_params(enc) == pytest.approx(35.3e6, rel=5e-3)
    assert n_params(dec) == pytest.approx(51.6e6, rel=5e-3)
    assert (n_params(enc), n_params(dec)) == unet_counts(128, [1, 2, 4, 4], 2, 32, 16)
    # structure: 2 attention blocks in the encoder's 32x32 level, 3 in the decoder's, none in mid
    assert [len(s.attn) for s in enc.down] == [0, 0, 0, 2]
    assert [len(s.attn) for s in dec.up] == [3, 0, 0, 0]  # decoder runs lowest resolution first
    assert isinstance(enc.mid.attn_1, torch.nn.Identity)


def test_unet_with_sd_layout_gives_sd_vae_counts():
    """Same code with the SD 1.x layout (mid attention only, 4 latent channels) gives the SD VAE
    encoder / decoder sizes 34,163,592 / 49,490,179."""
    cfg = UNetConfig(attn_levels=[], mid_attn=True)
    with META:
        enc, dec = UNetEncoder(cfg, 3, 8), UNetDecoder(cfg, 4, 3)
    assert (n_params(enc), n_params(dec)) == (34_163_592, 49_490_179)


def test_vit_paper_parameter_counts():
    """docs/method.md §5: about 86.0 M / 88.8 M (ViT-B/8, BSQ-ViT layout with a 3072-wide tanh head)."""
    cfg = ViTConfig()
    assert (cfg.patch, cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio) == (8, 768, 12, 12, 4.0)
    with META:
        enc, dec = build_backbone("vit", cfg, 32, 16)
    assert n_params(enc) == pytest.approx(86.0e6, rel=5e-3)
    assert n_params(dec) == pytest.approx(88.8e6, rel=5e-3)
    assert (n_params(enc), n_params(dec)) == vit_counts(8, 768, 12, 3072, 1024, 32, 16, 3072)


def test_discriminator_paper_parameter_count_and_shape():
    """ndf 160, 6 layers, ActNorm: channels 160-320-640-1280-1280-1280 | 1280 -> 1 logit map."""
    cfg = DiscriminatorConfig()
    assert (cfg.ndf, cfg.n_layers, cfg.use_actnorm) == (160, 6, True)
    with META:
        disc = NLayerDiscriminator(cfg).eval()  # eval: ActNorm would initialise on meta data
        logits = disc(torch.empty(2, 3, 256, 256))
    assert logits.shape == (2, 1, 2, 2)
    chans = [3, 160, 320, 640, 1280, 1280, 1280, 1280]
    expect = sum(_conv(4, a, b) for a, b in zip(chans[:-1], chans[1:])) + _conv(4, 1280, 1)
    expect += sum(2 * c for c in chans[2:])  # ActNorm loc + scale after every conv but the first
    assert n_params(disc) == expect == 95_892_961


# ----------------------------------------------------------------------------- shapes


def test_paper_presets_are_f8_on_meta_tensors():
    x = torch.empty(2, 3, 256, 256, device=META)
    for arch in BACKBONES:
        with META:
            enc, dec = build_backbone(arch, BACKBONES[arch][2](), 32, 16)
        z = enc(x)
        assert z.shape == (2, 32, 32, 32), arch
        assert dec(z[:, :16]).shape == (2, 3, 256, 256), arch


@pytest.mark.parametrize("arch,cfg", [("unet", SMALL_UNET), ("vit", SMALL_VIT)])
def test_small_presets_shapes_and_gradients(arch, cfg):
    """32 px -> 4x4 latent -> 32 px; every parameter receives a gradient."""
    torch.manual_seed(0)
    enc, dec = build_backbone(arch, cfg, 12, 6)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = enc(x)
    assert z.shape == (3, 12, 4, 4)
    x_rec = dec(z[:, :6])
    assert x_rec.shape == x.shape
    (x_rec - x).abs().mean().backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch,cfg", [("unet", SMALL_UNET), ("vit", SMALL_VIT)])
def test_deterministic_given_seed(arch, cfg):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        enc, dec = build_backbone(arch, cfg, 8, 4)
        outs.append((enc.state_dict(), dec(enc(torch.ones(1, 3, 32, 32))[:, :4])))
    assert all(torch.equal(a, outs[1][0][k]) for k, a in outs[0][0].items())
    assert torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("arch,cfg", [("unet", SMALL_UNET), ("vit", SMALL_VIT)])
def test_output_layer_is_the_last_weight(arch, cfg):
    """Autoencoder.last_layer (adaptive GAN weight) takes the decoder's last >= 2-D parameter."""
    _, dec = build_backbone(arch, cfg, 8, 4)
    assert [p for p in dec.parameters() if p.ndim >= 2][-1] is dec.conv_out.weight


def test_unet_attention_follows_lowest_level_when_shrunk():
    cfg = UNetConfig(ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, num_groups=4)
    enc, dec = UNetEncoder(cfg, 3, 16), UNetDecoder(cfg, 8, 3)
    assert [len(s.attn) for s in enc.down] == [0, 0, 1]
    assert [len(s.attn) for s in dec.up] == [2, 0, 0]
    assert enc(torch.zeros(1, 3, 16, 16)).shape == (1, 16, 4, 4)


@pytest.mark.parametrize("preset", ["tiny", "quick"])
def test_preset_models_build_and_run(preset):
    """The small presets of params.yaml give working backbones and a discriminator that fits."""
    cfg = load_config(ROOT / "params.yaml", preset)
    res, f, c = cfg.data.resolution, cfg.model.downsample, cfg.model.latent_channels
    x = torch.zeros(2, 3, res, res)
    for arch in ("unet", "vit"):
        arch_cfg = getattr(cfg.model, arch)
        if arch == "vit":
            arch_cfg = ViTConfig(**{**arch_cfg.__dict__, "image_size": res})
        enc, dec = build_backbone(arch, arch_cfg, 2 * c, c)
        z = enc(x)
        assert z.shape == (2, 2 * c, res // f, res // f)
        assert dec(z[:, :c]).shape == x.shape
    logits = NLayerDiscriminator(cfg.model.discriminator)(x)
    assert logits.shape[:2] == (2, 1) and min(logits.shape[-2:]) >= 1


# ----------------------------------------------------------------------------- ViT output clamp


def test_clamp_gradient_rules():
    """Inward: gradient kept inside the range and where descent moves the value back inside."""
    x = torch.tensor([-2.0, -2.0, 0.5, 0.5, 2.0, 2.0], requires_grad=True)
    g = torch.tensor([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    y = clamp_output(x, "inward")
    assert torch.equal(y, torch.tensor([-1.0, -1.0, 0.5, 0.5, 1.0, 1.0]))
    (y * g).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-1.0, 0.0, -1.0, 1.0, 0.0, 1.0]))
    x.grad = None
    (clamp_output(x, "hard") * g).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 0.0, -1.0, 1.0, 0.0, 0.0]))


@pytest.mark.parametrize("mode", ["inward", "hard"])
def test_vit_decoder_output_clamped(mode):
    """All pixels saturate at +5 before the clamp: output is exactly 1; the squared loss towards 0
    reaches the output bias (closed form 2 per pixel: 2 * B * tokens) only with the inward rule."""
    cfg = ViTConfig(width=32, layers=1, heads=2, image_size=32, clamp=mode)
    dec = ViTDecoder(cfg, 4, 3)
    with torch.no_grad():
        dec.conv_out.weight.zero_()
        dec.conv_out.bias.fill_(5.0)
    x_rec = dec(torch.randn(2, 4, 4, 4))
    assert torch.equal(x_rec, torch.ones(2, 3, 32, 32))
    x_rec.pow(2).sum().backward()
    expect = 2.0 * 2 * 16 if mode == "inward" else 0.0
    assert torch.equal(dec.conv_out.bias.grad, torch.full((192,), expect))
    # random init: the range holds for any input
    x = ViTDecoder(cfg, 4, 3)(100 * torch.randn(2, 4, 4, 4))
    assert x.min() >= -1 and x.max() <= 1


# ----------------------------------------------------------------------------- discriminator


def _actnorm_outputs(disc, x):
    outs = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
        for m in disc.modules()
        if isinstance(m, ActNorm)
    ]
    disc(x)
    for h in hooks:
        h.remove()
    return outs


def test_actnorm_initialises_on_first_training_batch():
    torch.manual_seed(0)
    disc = NLayerDiscriminator(DiscriminatorConfig(ndf=8, n_layers=3))
    outs = _actnorm_outputs(disc, torch.randn(8, 3, 32, 32) * 3 + 1)
    assert len(outs) == 3
    for o in outs:  # per channel over (B, H, W): mean 0, unbiased std 1
        flat = o.transpose(0, 1).reshape(o.shape[1], -1)
        assert flat.mean(1).abs().max() < 1e-5
        assert (flat.std(1) - 1).abs().max() < 1e-4
    norms = [m for m in disc.modules() if isinstance(m, ActNorm)]
    before = [(m.loc.clone(), m.scale.clone()) for m in norms]
    disc(torch.randn(8, 3, 32, 32))  # a second batch does not re-initialise
    assert all(
        torch.equal(m.loc, a) and torch.equal(m.scale, b) for m, (a, b) in zip(norms, before)
    )
    assert all(int(m.initialized) == 1 for m in norms)


def test_actnorm_state_resumes_exactly_and_eval_does_not_initialise():
    torch.manual_seed(0)
    cfg = DiscriminatorConfig(ndf=8, n_layers=2)
    disc = NLayerDiscriminator(cfg)
    disc(torch.randn(4, 3, 32, 32))
    state = disc.state_dict()
    assert sum(k.endswith(".initialized") for k in state) == 2
    torch.manual_seed(1)
    resumed = NLayerDiscriminator(cfg)
    resumed.load_state_dict(state)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(resumed(x), disc(x))  # training mode: no second initialisation

    fresh = NLayerDiscriminator(cfg).eval()
    fresh(x)
    assert all(int(m.initialized) == 0 for m in fresh.modules() if isinstance(m, ActNorm))


def test_discriminator_init_and_batchnorm_variant():
    torch.manual_seed(0)
    disc = NLayerDiscriminator(DiscriminatorConfig(ndf=64, n_layers=3, use_actnorm=False))
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    w = torch.cat([c.weight.flatten() for c in convs])
    assert w.mean().abs() < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bns = [m for m in disc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 and all(m.bias.abs().max() == 0 for m in bns)
    assert all(c.bias is None for c in convs[1:-1])  # BatchNorm carries the shift
    gamma = torch.cat([m.weight for m in bns])
    assert abs(gamma.mean().item() - 1) < 0.01 and abs(gamma.std().item() - 0.02) < 0.01
    assert disc(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)


@pytest.mark.parametrize("n_layers,size,out", [(1, 16, 6), (2, 32, 6), (3, 32, 2), (1, 6, 1)])
def test_discriminator_logit_map_size(n_layers, size, out):
    disc = NLayerDiscriminator(DiscriminatorConfig(ndf=4, n_layers=n_layers))
    assert disc(torch.zeros(2, 3, size, size)).shape == (2, 1, out, out)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: UNetConfig(ch=48), "num_groups: 32 does not divide the channel count 48"),
        (lambda: UNetConfig(ch=32, num_groups=5), "num_groups: 5"),
        (lambda: UNetConfig(ch_mult=[1, 2], attn_levels=[2]), "attn_levels: level 2"),
        (lambda: UNetConfig(ch_mult=[]), "ch_mult"),
        (lambda: UNetConfig(num_res_blocks=0), "num_res_blocks"),
        (lambda: UNetConfig(out_head="ln"), "out_head: 'ln' is not one of conv3x3, ln_conv1x1"),
        (lambda: ViTConfig(width=100), "heads: 12 does not divide vit.width=100"),
        (lambda: ViTConfig(image_size=30), "image_size: 30"),
        (lambda: ViTConfig(clamp="soft"), "clamp: 'soft'"),
        (lambda: DiscriminatorConfig(n_layers=0), "n_layers"),
        (lambda: build_backbone("resnet", UNetConfig(), 32, 16), "allowed: unet, vit"),
        (lambda: build_backbone("vit", UNetConfig(), 32, 16), "needs a ViTConfig"),
    ],
)
def test_bad_configs_raise(make, match):
    with pytest.raises(GaussquantError, match=match):
        make()


def test_bad_inputs_raise():
    disc = NLayerDiscriminator(DiscriminatorConfig(ndf=4, n_layers=4))
    with pytest.raises(
        GaussquantError, match=r"n_layers=4 needs images of at least 48x48.*at most 3"
    ):
        disc(torch.zeros(1, 3, 32, 32))
    with pytest.raises(GaussquantError, match="not a multiple of the downsampling factor 8"):
        UNetEncoder(SMALL_UNET, 3, 8)(torch.zeros(1, 3, 36, 36))
    with pytest.raises(GaussquantError, match="built for 32x32 images"):
        ViTEncoder(SMALL_VIT, 3, 8)(torch.zeros(1, 3, 64, 64))
    with pytest.raises(GaussquantError, match="4x4 latent grid"):
        ViTDecoder(SMALL_VIT, 8, 3)(torch.zeros(1, 8, 8, 8))


def _actnorm_worker(rank: int, init_file: str, batch: torch.Tensor, out: dict) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    torch.manual_seed(0)
    disc = NLayerDiscriminator(DiscriminatorConfig(ndf=4, n_layers=1))
    disc(batch[rank * 3 : rank * 3 + 3])  # each process sees its own half
    out[rank] = {k: v.clone() for k, v in disc.state_dict().items()}
    torch.distributed.destroy_process_group()


def test_actnorm_init_is_global_across_processes(tmp_path):
    """Two processes with different shards start from identical ActNorm values, equal to one
    process initialised on the whole batch."""
    batch = torch.randn(6, 3, 16, 16)
    batch[3:] = batch[3:] * 4 + 2  # the shards differ a lot
    with torch.multiprocessing.Manager() as manager:
        out = manager.dict()
        torch.multiprocessing.spawn(
            _actnorm_worker, args=(str(tmp_path / "init"), batch, out), nprocs=2
        )
        states = [dict(out[0]), dict(out[1])]
    torch.manual_seed(0)
    single = NLayerDiscriminator(DiscriminatorConfig(ndf=4, n_layers=1))
    single(batch)
    for key, value in single.state_dict().items():
        assert torch.equal(states[0][key], states[1][key]), key
        torch.testing.assert_close(states[0][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_common_random_numbers_across_methods(arch):
    """For one seed every method starts from the same backbone except the layers whose shape is
    its bottleneck's, and leaves the global generator where the seed put it (the same training
    noise): paired comparisons over seeds share this noise (models/streams.py)."""
    from gaussquant.models.autoencoder import build_autoencoder

    cfg = load_config(Path(__file__).parents[1] / "params.yaml", "tiny")
    built, after = {}, {}
    for method in ("tdc", "vanilla", "fsq", "lfq", "bsq", "vq"):
        torch.manual_seed(3)
        built[method] = build_autoencoder(cfg, method, arch, "8").state_dict()
        after[method] = torch.rand(4)
    ref = built["tdc"]
    for method, sd in built.items():
        backbone = [k for k in sd if k.startswith(("encoder.", "decoder."))]
        same = [k for k in backbone if sd[k].shape == ref[k].shape and torch.equal(sd[k], ref[k])]
        # only the encoder's output layer and the decoder's input layer may differ (weight, bias)
        assert len(backbone) - len(same) <= 4, (method, sorted(set(backbone) - set(same)))
        assert all(k.split(".")[1] in ("conv_out", "proj_out", "conv_in", "proj_in")
                   for k in set(backbone) - set(same)), method  # fmt: skip
        assert torch.equal(after[method], after["tdc"]), method
    torch.manual_seed(4)  # another seed: other weights
    other = build_autoencoder(cfg, "tdc", arch, "8").state_dict()
    assert not torch.equal(other["decoder.conv_out.weight"], ref["decoder.conv_out.weight"])


def test_unet_per_position_head_sets_each_token_from_its_own_normalised_features():
    """out_head ln_conv1x1: a 1x1 conv_out after a LayerNorm over each position's channels, so
    rescaling one position's features changes no output and replacing them changes that
    position's output only; the official head (conv3x3) mixes the neighbours. Same state-dict
    keys as the official head (the norm has no weights)."""
    small = dict(ch=16, ch_mult=[1, 2], num_res_blocks=1, num_groups=8)
    torch.manual_seed(0)
    enc = UNetEncoder(UNetConfig(**small, out_head="ln_conv1x1"), out_channels=8)
    official = UNetEncoder(UNetConfig(**small), out_channels=8)
    assert enc.conv_out.kernel_size == (1, 1) and official.conv_out.kernel_size == (3, 3)
    assert enc.state_dict().keys() == official.state_dict().keys()
    h = torch.randn(2, 32, 4, 4)
    scaled, replaced = h.clone(), h.clone()
    scaled[:, :, 1, 2] *= 7.0
    replaced[:, :, 1, 2] = torch.randn(2, 32)

    def head(m, x):
        return m.conv_out(m.norm_position(x))

    with torch.no_grad():
        base = head(enc, h)
        assert torch.allclose(head(enc, scaled), base, atol=1e-5)
        changed = (head(enc, replaced) - base).abs().amax(dim=(0, 1)) > 1e-6
        assert changed.nonzero().tolist() == [[1, 2]]
        mixed = (head(official, replaced) - head(official, h)).abs().amax(dim=(0, 1)) > 1e-6
        assert mixed.sum() == 9  # the 3x3 neighbourhood of (1, 2)
    x = torch.randn(2, 3, 16, 16)
    assert enc(x).shape == official(x).shape == (2, 8, 8, 8)
