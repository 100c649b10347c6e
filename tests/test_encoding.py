"""The shared encoding pass and the token-rate summary (gaussquant.encoding)."""

import math

import numpy as np
import pytest
import torch

from gaussquant.encoding import RateStats, encoded_batches, rate_summary, shard


def test_rate_summary_on_hand_made_rates():
    # 20 tokens: 2 below 7.5, 15 within 8 +- 0.5, 3 above 8.5
    bits = np.array([6.0, 7.0] + [8.0] * 15 + [9.0, 9.5, 10.5])
    s = rate_summary(bits, 8.0, 0.5)
    assert s["tokens"] == 20 and s["min"] == 6.0 and s["max"] == 10.5
    assert s["below_tolerance"] == pytest.approx(2 / 20)
    assert s["within_tolerance"] == pytest.approx(15 / 20)
    assert s["above_tolerance"] == pytest.approx(3 / 20)
    assert s["p05"] == pytest.approx(np.percentile(bits, 5)) and s["p95"] <= 10.0
    assert s["holds"]  # p05-p95 inside 6-10 and 75 % >= 70 % within
    assert rate_summary(bits, 8.0, 0.25)["within_tolerance"] == pytest.approx(15 / 20)


@pytest.mark.parametrize(
    "bits, holds",
    [
        (np.r_[np.full(69, 8.0), np.full(31, 7.0)], False),  # 69 % within: too few
        (np.r_[np.full(70, 8.0), np.full(30, 7.0)], True),  # exactly 70 %
        (np.r_[np.full(90, 8.0), np.full(10, 11.0)], False),  # p95 = 11 > 8 + 2
        (np.r_[np.full(90, 8.0), np.full(10, 5.5)], False),  # p05 = 5.5 < 8 - 2
    ],
)
def test_tdc_holds_is_the_band_and_the_share_within(bits, holds):
    assert rate_summary(bits, 8.0, 0.5)["holds"] is holds


def test_rate_summary_without_a_target_has_no_verdict():
    s = rate_summary(np.arange(10.0), None, 0.5)
    assert "holds" not in s and s["mean"] == 4.5


def test_rate_stats_are_the_closed_form_kl_in_bits():
    # C = 2, m = 2: one token per position; KL of N(mu, e^lv) vs N(0, 1) summed over its 2 dims
    mu = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    lv = torch.tensor([0.0, math.log(4.0)]).view(1, 2, 1, 1)
    stats = RateStats(dim=2)
    stats.update(torch.cat([mu, lv], 1))
    kl = 0.5 * (1.0 + 0) + 0.5 * (4.0 + 4.0 - 1 - math.log(4.0))
    r = stats.result()
    assert r["token_bits"] == pytest.approx([kl / math.log(2)])
    assert r["channel_bits"] == pytest.approx([0.5 / math.log(2), (kl - 0.5) / math.log(2)])


def test_encoded_batches_cover_each_image_once_across_processes():
    data = [torch.full((3, 2, 2), float(i)) for i in range(7)]
    seen = []
    for rank in range(2):
        for x, z in encoded_batches(lambda t: 2 * t, data, 3, max_images=5, rank=rank, world=2):
            assert torch.equal(z, 2 * x)
            seen += x[:, 0, 0, 0].tolist()
    assert sorted(seen) == [0, 1, 2, 3, 4] and shard(data, 5, 1, 2)[1] == 5


def test_training_records_the_rates_that_reencoding_its_checkpoint_gives(
    tiny_cfg, tiny_data, weights_dir, tmp_path
):
    """A Gaussian VAE's training writes rates.npz from the model in memory: the same rates as
    loading model.pt and encoding the validation images again (what the KL figure and the
    ablations did before), and the summary's TDC check is the summary of those rates."""
    import json

    from gaussquant.checkpoint import load_autoencoder
    from gaussquant.data import PreparedDataset
    from gaussquant.encoding import posterior_rates
    from gaussquant.records import RATES_FILE, load_rates
    from gaussquant.train import train

    ckpt = train(tiny_cfg, "tdc", "unet", "8", tiny_data, tmp_path, weights_dir, progress=False)
    saved = load_rates(tmp_path / RATES_FILE)
    model, _ = load_autoencoder(ckpt)
    val = PreparedDataset(tiny_data, "val")
    again = posterior_rates(model, val, tiny_cfg.eval.batch_size) | {"method": "tdc"}
    assert saved["method"] == again["method"] == "tdc" and saved["dim"] == again["dim"]
    assert saved["target"] == again["target"] == 8.0
    assert saved["tolerance"] == again["tolerance"] == tiny_cfg.tdc.tolerance
    assert saved["token_bits"].shape == again["token_bits"].shape == (16 * 16,)
    np.testing.assert_allclose(saved["token_bits"], again["token_bits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saved["channel_bits"], again["channel_bits"], rtol=1e-5)
    check = json.loads((tmp_path / "summary.json").read_text())["tdc"]
    s = rate_summary(saved["token_bits"], 8.0, tiny_cfg.tdc.tolerance)
    assert check["val_p05"] == pytest.approx(s["p05"], rel=1e-6)
    assert check["val_within_tolerance"] == pytest.approx(s["within_tolerance"])


def test_rates_file_round_trip_and_refusals(tmp_path):
    """save_rates/load_rates keep every field (no target: None); a file holding a pickle or
    missing a field is refused with one line, and nothing in it is unpickled."""
    from gaussquant.errors import GaussquantError
    from gaussquant.records import load_rates, save_rates

    rates = {
        "token_bits": np.array([1.5, 2.25, 7.0], dtype=np.float32),
        "channel_bits": np.array([0.5, 0.25], dtype=np.float32),
        "dim": 2,
        "target": None,
        "tolerance": None,
        "method": "vanilla",
    }
    save_rates(tmp_path / "r.npz", rates)
    back = load_rates(tmp_path / "r.npz")
    assert back["target"] is None and back["tolerance"] is None and back["method"] == "vanilla"
    assert back["dim"] == 2 and back["token_bits"].tolist() == [1.5, 2.25, 7.0]
    save_rates(tmp_path / "t.npz", rates | {"target": 16.0, "tolerance": 0.5})
    assert load_rates(tmp_path / "t.npz")["target"] == 16.0
    np.savez(tmp_path / "obj.npz", token_bits=np.array([{"a": 1}], dtype=object))
    with pytest.raises(GaussquantError, match=r"obj\.npz is not a rates file") as err:
        load_rates(tmp_path / "obj.npz")
    assert "\n" not in str(err.value)
    with pytest.raises(GaussquantError, match=r"model\.pt: expected the rates\.npz"):
        load_rates(tmp_path / "model.pt")
    np.savez(tmp_path / "part.npz", token_bits=np.zeros(3))
    with pytest.raises(
        GaussquantError, match=r"part\.npz is not a rates file written by training \(KeyError"
    ):
        load_rates(tmp_path / "part.npz")
