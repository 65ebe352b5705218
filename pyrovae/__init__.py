"""pyrovae: variational autoencoders written as Pyro programs and trained by SVI.

>>> import torch, pyrovae
>>> vae = pyrovae.VAE((1, 28, 28), z_dim=2, hidden=(16,))
>>> vae.encode(torch.rand(5, 1, 28, 28)).batch_shape
torch.Size([5])
"""

import warnings

with warnings.catch_warnings():
    # Pyro's MCMC logger imports tqdm.auto, which in a notebook without ipywidgets warns
    # "IProgress not found". pyrovae's progress bars are plain tqdm (and off in notebooks'
    # examples), so the warning concerns nothing pyrovae shows.
    warnings.filterwarnings("ignore", message="IProgress not found")
    import pyro.infer  # noqa: F401

from .build import build_model
from .config import PRESETS, Config, ConfigError
from .data import DataError, Dataset, Split, load_dataset
from .elbos import IWAE, TCVAE, CapacityELBO
from .evaluate import active_units, elbo_terms, evaluate, kl_per_dim, log_likelihood
from .fit import TrainingError, fit
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .loaded import Run, load_run
from .models import VAE
from .nets import NETS
from .objectives import ELBOLoss, make_elbo
from .priors import PRIORS
from .runs import train
from .semisupervised import SSVAE, SemiSupervisedLoss
from .svi import SVI
from .sweep import sweep
from .variants import MODELS

__version__ = "0.1.0"

__all__ = [
    "VAE", "SVI", "SSVAE", "SemiSupervisedLoss", "Config", "ConfigError", "DataError", "Dataset", "Split", "Run", "TrainingError",
    "MODELS", "PRESETS", "PRIORS", "GUIDES", "LIKELIHOODS", "NETS", "CapacityELBO", "IWAE", "TCVAE", "ELBOLoss",
    "build_model", "load_dataset", "fit", "train", "load_run", "make_elbo", "sweep",
    "evaluate", "elbo_terms", "log_likelihood", "kl_per_dim", "active_units",
]  # fmt: skip
