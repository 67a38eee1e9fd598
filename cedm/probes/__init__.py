"""Probes (seed 004): condition a trained (unconditional) model after training, through a small classifier on
its denoiser's own representations: ``features`` (pooled block outputs), ``probe`` (train, save, cache),
``guidance`` (classifier guidance as a denoiser transform; rejection), ``sample`` (guided sampling)."""
from cedm.probes import kind as _kind  # noqa: F401  (registers the "probe" guidance kind)
from cedm.probes.features import DEFAULT_BLOCKS, denoiser_features
from cedm.probes.guidance import classifier_guidance, probe_guidance, select_candidates
from cedm.probes.probe import (
                               DEFAULT_ROUTE,
                               ROUTES,
                               STAGE_PROBES,
                               Probe,
                               ProbeSettings,
                               get_probe,
                               list_probes,
                               load_probe,
                               probe_labels,
                               save_probe,
                               train_probe,
)

__all__ = ["DEFAULT_BLOCKS", "DEFAULT_ROUTE", "ROUTES", "STAGE_PROBES", "Probe", "ProbeSettings",
           "classifier_guidance", "denoiser_features", "get_probe", "list_probes", "load_probe", "probe_guidance",
           "probe_labels", "save_probe", "select_candidates", "train_probe"]
