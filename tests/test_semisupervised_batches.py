"""How a semi-supervised run batches its labelled images (``--labeled-batches``): the schedule of
:func:`~pyrovae.semisupervised.separate_batches`, and a CLI run that trains on it, its labelled
steps' losses recomputed by hand."""

import csv

import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrovae import Config, ConfigError
from pyrovae.cli import main
from pyrovae.semisupervised import UNLABELED, SemiSupervisedLoss, separate_batches


def test_separate_batches_spread_whole_labelled_batches_among_the_unlabelled_ones():
    perm = torch.randperm(45, generator=torch.Generator().manual_seed(0))
    labelled = torch.zeros(45, dtype=torch.bool)
    labelled[perm[::4][:12]] = True  # 12 labelled images scattered through the order
    batches = separate_batches(perm, labelled, 5)
    kinds = ["L" if labelled[b].all() else "U" if not labelled[b].any() else "?" for b in batches]
    # 3 labelled batches (5, 5, 2) among 7 unlabelled ones (6 x 5, 3): before unlabelled batch 0, 7//3, 14//3
    assert "".join(kinds) == "LUULUULUUU"
    assert [len(b) for b in batches] == [5, 5, 5, 5, 5, 5, 2, 5, 5, 3]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(45))  # every image once
    assert torch.equal(
        torch.cat([b for b in batches if labelled[b].all()]), perm[labelled[perm]]
    )  # perm's order
    assert len(separate_batches(perm, torch.zeros(45, dtype=torch.bool), 10)) == 5  # nothing labelled


def test_labeled_batches_needs_a_semi_supervised_run():
    with pytest.raises(ConfigError, match="semi-supervised run") as e:
        Config(labeled_batches="separate").validate()
    assert e.value.option == "labeled_batches"


def _bars(tmp_path, n=60):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    proto = torch.zeros(3, 6, 6)
    for k in range(3):
        proto[k, 2 * k : 2 * k + 2] = 1
    x = torch.bernoulli((proto[y] * 0.9 + 0.05).unsqueeze(1), generator=g)
    torch.save({"x": x, "y": y}, tmp_path / "bars.pt")
    return tmp_path / "bars.pt"


def test_cli_trains_on_separate_labelled_batches(tmp_path, monkeypatch):
    steps = []  # (labelled rows, unlabelled rows, loss, loss recomputed by hand for a labelled batch)
    forward = SemiSupervisedLoss.forward

    def spy(self, x, y, beta=1.0):
        labelled, by_hand = y != UNLABELED, None
        if labelled.all():  # labelled ELBO + alpha * sum of -log q(y|x), with the same z draw
            rng = torch.get_rng_state()
            with torch.no_grad():
                by_hand = Trace_ELBO().loss(self.vae.model, self.vae.guide, x, y, beta=beta)
                by_hand -= self.alpha * self.vae.classify(x).log_prob(y).sum().item()
            torch.set_rng_state(rng)
        loss = forward(self, x, y, beta)
        steps.append((int(labelled.sum()), int((~labelled).sum()), loss.item(), by_hand))
        return loss

    monkeypatch.setattr(SemiSupervisedLoss, "forward", spy)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "file", "--data-file", str(_bars(tmp_path)),
                 "--semi-supervised", "--labeled", "12", "--labeled-batches", "separate", "--aux-weight", "3",
                 "--z-dim", "2", "--hidden", "8", "--batch-size", "5", "--epochs", "2", "--no-eval", "--quiet",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    # 48 training images (the file's 80 %): 3 labelled batches before unlabelled batch 0, 8//3, 16//3
    assert len(steps) == 22
    for epoch in (steps[:11], steps[11:]):
        assert [s[0] for s in epoch] == [5, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0]
        assert [s[1] for s in epoch] == [0, 5, 5, 0, 5, 5, 5, 0, 5, 5, 1]
    assert sum(s[3] is not None for s in steps) == 6
    for _, _, loss, by_hand in steps:
        if by_hand is not None:
            assert loss == pytest.approx(by_hand, rel=1e-5)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    for row, epoch in zip(rows, (steps[:11], steps[11:]), strict=True):  # loss per image of the epoch
        assert float(row["train_loss"]) == pytest.approx(sum(s[2] for s in epoch) / 48, rel=1e-5)
