"""Every atomic column of an image in one call: ``find_atoms``.

Three stages, each replaceable:

1. **Restoration** (``restore=True``): the image is restored with the shipped ``stem-hr`` network
   (:func:`emrestore.restore.restore`) when that model exists; otherwise this step is skipped
   with a note.
2. **Candidates**:

   * ``method="network"``: the atom-finder network (:mod:`emrestore.nn.atomnet`, seed 004's
     AtomID-net): confidence map + global spacing on an image resampled to its canonical column
     spacing, decoded by max-pooling and box NMS (boxes as large as the predicted spacing) or
     by Otsu thresholding and connected components (seed 003); it reads the raw image, the
     restored one, or both, as its model card says;
   * ``method="peaks"``: classical local maxima (:func:`emrestore.atoms.detect.find_candidates`)
     on the restored image when there is one, else on the raw image;
   * ``method="auto"``: the network when an atom-finder model is shipped (``model``, default
     ``"atoms-hr"``), else the peaks, with a logged note.

   The two user overrides are seed 004's two GUI sliders: ``threshold`` (network: the minimum
   confidence 0-1; peaks: the minimum prominence as a fraction of the strongest column's) and
   ``min_separation_px`` (no two columns closer than this).
3. **Refinement** (:func:`emrestore.atoms.refine.refine_columns`): the joint Gaussian fit gives
   sub-pixel positions, their uncertainties (Fisher information / CRLB), amplitudes, widths and
   scattering cross-sections. It runs on the **raw** image by default (``refine_on="raw"``):
   restoration only helps to *find* the columns; the raw counts keep their Poisson statistics,
   so the likelihood, the uncertainties and the SCS stay those of the measurement, whereas a
   restored image has correlated, non-Poisson residuals and whatever bias the network adds.
   ``refine_on="restored"`` fits the restored image by least squares instead.

Decisions are recorded in ``table.info["detection"]`` and ``table.info["notes"]``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import check_image, check_pixel_size
from .refine import ColumnTable, refine_columns

__all__ = ["atom_model_available", "find_atoms"]

logger = logging.getLogger(__name__)

METHODS = ("auto", "network", "peaks")


def _zoo_has(name, task: str) -> bool:
    from ..nn.zoo import list_models

    text = os.fspath(name)
    path = Path(text)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix(".json").exists() and path.with_suffix(".safetensors").exists()
    return any(c.get("name") == text for c in list_models(task=task))


def atom_model_available(model="atoms-hr") -> bool:
    """Whether ``model`` (a zoo name, card/weights path, checkpoint folder or a network) can be
    loaded as an atom finder."""
    import torch

    if isinstance(model, torch.nn.Module) or isinstance(model, (tuple, list)):
        return True
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        return (Path(model) / "meta.json").exists()
    return isinstance(model, (str, os.PathLike)) and _zoo_has(model, "atoms")


def _load_atom_model(model, device) -> tuple[Any, dict[str, Any]]:
    """(AtomNet in eval mode, card) from a zoo name / card path / checkpoint folder / module."""
    from ..nn.atomnet import AtomNet

    if isinstance(model, AtomNet):
        return model.eval(), {"name": "custom", "input": "raw"}
    if isinstance(model, (tuple, list)) and len(model) == 2 and isinstance(model[0], AtomNet):
        return model[0].eval(), {"name": "custom", "input": "raw", **dict(model[1] or {})}
    if not isinstance(model, (str, os.PathLike)):
        raise InputError("model must be an atom-finder name (see `emrestore models`), the path of "
                         "its card or weights, a training checkpoint folder or an AtomNet; got "
                         f"{type(model).__name__}")
    if Path(model).is_dir():
        from ..nn.atomnet_train import atomnet_from_checkpoint

        return atomnet_from_checkpoint(model, device=device)
    from ..nn.zoo import load_model

    return load_model(model, device=device, task="atoms")


def _check_positive_px(name: str, value) -> None:
    try:
        ok = float(value) > 0 and np.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name} must be a positive number of pixels, got {value!r}")


def _empty_table(pixel_size_A) -> ColumnTable:
    z = np.zeros(0)
    return ColumnTable(y_px=z, x_px=z.copy(), sigma_y_px=z.copy(), sigma_x_px=z.copy(),
                       amplitude=z.copy(), width_px=z.copy(), background=z.copy(),
                       scs_px2=z.copy(), scs_std_px2=z.copy(), converged=np.zeros(0, bool),
                       group=np.zeros(0, int), pixel_size_A=pixel_size_A, method="none")


def _unrefined_table(cand: np.ndarray, pixel_size_A) -> ColumnTable:
    n = len(cand)
    nan = np.full(n, np.nan)
    return ColumnTable(y_px=cand[:, 0].copy(), x_px=cand[:, 1].copy(), sigma_y_px=nan.copy(),
                       sigma_x_px=nan.copy(), amplitude=nan.copy(), width_px=nan.copy(),
                       background=nan.copy(), scs_px2=nan.copy(), scs_std_px2=nan.copy(),
                       converged=np.zeros(n, bool), group=np.arange(n),
                       pixel_size_A=pixel_size_A, method="none")


def find_atoms(image, pixel_size: float | None = None, method: str = "auto",
               restore: bool = True, *, threshold: float | None = None,
               min_separation_px: float | None = None, model="atoms-hr",
               restore_model="stem-hr", decode: str = "nms", refine: bool = True,
               refine_on: str = "raw", widths: str = "same", noise: str = "auto",
               spacing_px: float | None = None, relative_threshold: float | None = None,
               device: str | None = None) -> ColumnTable:
    """Find and quantify every atomic column of an image.

    Parameters
    ----------
    image : (rows, cols) array or :class:`emrestore.image.Image`
        HAADF-like image (bright columns), in its own units (counts per pixel for counting data).
    pixel_size : float, optional
        Å per pixel, for the positions and SCS in Å (default: the Image's calibration).
    method : "auto", "network" or "peaks"
        See the module docstring; "auto" uses the network when ``model`` is available.
    restore : bool
        Restore the image first with ``restore_model`` when that model is shipped.
    threshold : float, optional
        Minimum confidence 0-1 (network; default the model card's) or minimum prominence as a
        fraction of the strongest column's (peaks; default automatic from the noise).
    min_separation_px : float, optional
        No two candidate columns closer than this, in pixels (default: the network's box NMS
        with the predicted spacing, or ``find_candidates``' automatic choice).
    model : atom-finder zoo name, card/weights path, training checkpoint folder, or an AtomNet.
    restore_model : restoration zoo name or card path.
    decode : "nms" (max-pool + box NMS, seed 004) or "otsu" (Otsu + connected components,
        seed 003); network only.
    refine : run the joint Gaussian refinement (False: candidate positions only, NaN elsewhere).
    refine_on : "raw" (default, see the module docstring) or "restored".
    widths, noise : passed to :func:`refine_columns`.
    relative_threshold : network only: drop columns less confident than this fraction of the
        median confidence of the image's columns (default the model card's; 0: off).
    spacing_px : known column spacing (nearest-neighbour distance) in pixels; the network holds
        it instead of estimating its own, local maxima take it as their scale.
    device : torch device for the networks (default: CUDA when present, else the CPU).

    Returns
    -------
    ColumnTable
        Positions (px, and Å with a pixel size), 1-σ uncertainties, amplitude, width, background
        and SCS per column; ``info["detection"]`` says how the columns were found and
        ``info["notes"]`` what was skipped. Empty when no column is found.

    Raises
    ------
    InputError
        Not a 2-D finite image, pixel size ≤ 0, an unknown method/decode/refine_on, a threshold
        or relative_threshold outside 0-1, min_separation_px or spacing_px ≤ 0, or
        ``method="network"`` without a usable model.
    """
    from ..image import Image

    if isinstance(image, Image):
        if pixel_size is None:
            pixel_size = image.pixel_size_A
        image = image.array
    img = check_image(image, name="image to find atoms in", allow_rgb=False)
    pixel_size = check_pixel_size(pixel_size)
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if decode not in ("nms", "otsu"):
        raise InputError(f"decode must be 'nms' or 'otsu', got {decode!r}")
    if refine_on not in ("raw", "restored"):
        raise InputError(f"refine_on must be 'raw' or 'restored', got {refine_on!r}")
    # checked whichever method runs: a bad value is an error, not silently unused
    for name, value in (("threshold", threshold), ("relative_threshold", relative_threshold)):
        if value is None:
            continue
        try:
            ok = 0.0 <= float(value) <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{name} is a fraction between 0 and 1, got {value!r}")
    for name, value in (("min_separation_px", min_separation_px), ("spacing_px", spacing_px)):
        if value is not None:
            _check_positive_px(name, value)
    if min(img.shape) < 8:
        raise InputError(f"image of shape {img.shape} is too small to find atomic columns in")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    notes: list[str] = []

    net = card = None
    if method in ("auto", "network"):
        if method == "network" or atom_model_available(model):
            try:
                net, card = _load_atom_model(model, device)
            except InputError as exc:
                if method == "network":
                    raise InputError(f"method='network': {exc}") from exc
                notes.append(f"atom-finder model {model!s} could not be loaded ({exc}); "
                             "using classical peak finding")
        else:
            notes.append(f"no atom-finder model {model!s} is shipped; using classical peak "
                         "finding (train one: emrestore train --config configs/atoms-hr.toml)")
    needs_restored = net is not None and card.get("input", "raw") in ("restored", "both")
    if needs_restored and card.get("restore_model") and restore_model == "stem-hr":
        restore_model = card["restore_model"]

    restored = None
    if restore or needs_restored:
        if _restore_available(restore_model):
            from ..restore import restore as restore_image

            restored = np.asarray(restore_image(img, model=restore_model, device=device),
                                  np.float32)
        else:
            notes.append(f"restoration skipped: the model {restore_model!s} is not shipped")
        if needs_restored and not restore:
            notes.append("the atom-finder model reads the restored image, so it was restored "
                         "although restore=False")
    if needs_restored and restored is None:
        msg = (f"the atom-finder model {card.get('name')!r} reads the restored image "
               f"(input {card.get('input')!r}), but the restoration model {restore_model!s} is "
               "not available")
        if method == "network":
            raise InputError(msg)
        notes.append(msg + "; using classical peak finding")
        net = None

    detection: dict[str, Any] = {"restored": restored is not None, "refine_on": refine_on}
    if net is not None:
        from ..nn.atomnet import detect_columns

        kind = card.get("input", "raw")
        chans = {"raw": img, "restored": restored,
                 "both": None if restored is None else np.stack([img, restored])}[kind]
        t = threshold
        if t is None:
            t = float((card.get("decode") or {}).get("threshold", 0.3)) if decode == "nms" \
                else None
        params = (card.get("normalisation") or {}).get("params")
        iou = float((card.get("decode") or {}).get("iou_threshold", 0.3))
        rel = relative_threshold
        if rel is None:
            rel = float((card.get("decode") or {}).get("relative_threshold", 0.0))
        cand, scores, dinfo = detect_columns(net, chans, spacing_px=spacing_px, threshold=t,
                                             min_separation_px=min_separation_px, decode=decode,
                                             iou_threshold=iou, device=device,
                                             norm_params=params, pixel_size_A=pixel_size,
                                             relative_threshold=rel)
        detection.update({k: v for k, v in dinfo.items() if k != "confidence"})
        detection.update(method="network", model=str(card.get("name", model)), input=kind)
    else:
        from .detect import find_candidates

        work = restored if restored is not None else img
        cand, dinfo = find_candidates(work, method="peaks", min_separation_px=min_separation_px,
                                      threshold=threshold, spacing_px=spacing_px,
                                      return_info=True)
        scores = None
        detection.update({**dinfo, "method": "peaks"})
    detection["n_candidates"] = len(cand)

    if refine_on == "restored" and restored is None:
        notes.append("refine_on='restored' but there is no restored image: refined on the raw")
    use_restored = refine_on == "restored" and restored is not None
    fit_image = restored if use_restored else img
    if len(cand) == 0:
        notes.append("no atomic columns found")
        table = _empty_table(pixel_size)
    elif refine:
        table = refine_columns(fit_image, cand, pixel_size_A=pixel_size, widths=widths,
                               noise="gaussian" if use_restored else noise)
        # a fit that wandered off the image (a false candidate on noise) is no column of it
        h, w = img.shape
        inside = ((table.y_px >= -0.5) & (table.y_px <= h - 0.5) & (table.x_px >= -0.5)
                  & (table.x_px <= w - 0.5))
        if not inside.all():
            table = table.subset(inside)
            detection["n_left_the_image"] = int((~inside).sum())
            notes.append(f"{int((~inside).sum())} refined column(s) left the image and were "
                         "dropped")
    else:
        table = _unrefined_table(np.asarray(cand, float), pixel_size)
    if scores is not None:
        detection["median_confidence"] = float(np.median(scores)) if len(scores) else None
    table.info["detection"] = detection
    table.info["notes"] = notes
    for note in notes:
        logger.info(note)
    return table


def _restore_available(name) -> bool:
    """Whether the restoration model ``name`` (zoo name, card path or module) can be used."""
    import torch

    if isinstance(name, torch.nn.Module) or isinstance(name, (tuple, list)):
        return True
    return isinstance(name, (str, os.PathLike)) and _zoo_has(name, "restore")
