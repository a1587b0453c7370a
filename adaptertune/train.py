"""One training run, top to bottom: data, model, AdamW + warmup/cosine, epochs, best-on-val, test once.

`train_run(config, run_dir)` writes the run directory (runs.py) and returns its summary. It
checkpoints after every epoch and resumes from the last checkpoint; a finished run is not rerun.
The step loop never syncs with the host except every `log_every` steps and at the end of an epoch.
Under torchrun the run is one DDP run over the processes (the hooks are in distributed.py).
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, checkpoint, data, distributed, inference, progress, runs
from .peft_methods import disabled
from .backbones import build_model, describe, head_names, preprocess, trainable_state
from .config import Config
from .errors import UserError
from .features import PRECISION as FEATURES_PRECISION, extract


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a device this machine has; UserError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device on this machine (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def environment() -> dict:
    import timm

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"adaptertune": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "git_commit": commit,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base lr: linear warmup over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def param_groups(model, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups from the model, by timm's own helpers: no weight decay on biases, norms and what
    `model.no_weight_decay()` names (position embedding, class / register / distillation tokens).
    With `layer_decay` < 1, timm's layer-wise lr decay: each group's "lr_scale" is layer_decay ** (depth
    from the head), by the model's `group_matcher` (the strong full fine-tuning baseline)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay < 1:
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


class Trainer:
    """The pieces of a run that every epoch needs; built once per run."""

    def __init__(self, config: Config, log=print):
        self.config, self.log = config, log
        self.dist = distributed.current()  # one process, or this one's rank under torchrun
        self.bars = progress.enabled(config.quiet) and self.dist.main
        self.device = self.dist.device(resolve_device(config.device))
        self.precision = config.precision if config.precision != "auto" else (
            "bf16" if self.device.type == "cuda" else "fp32")
        self.pre = preprocess(config.backbone, config.image_size)  # the model's own data config
        self.size = self.pre.input_size
        with self.dist.main_first():  # under torchrun rank 0 fills a decode cache, the others read it
            train, test = data.load(config, self.size)
        self.train_images, self.test_images = train.to(self.device), test.to(self.device)
        torch.manual_seed(config.seed)
        self.model, self.counts = build_model(config, train.num_classes)
        self.model.to(self.device)
        self.backbone = describe(self.model, config.backbone, config.weights)
        self.classes = train.classes or [str(i) for i in range(train.num_classes)]
        self.mean, self.std = self.pre.mean, self.pre.std
        self.lr = config.lr * config.batch_size / 1024  # linear scaling rule
        fused = self.device.type == "cuda"
        groups = param_groups(self.model, config.weight_decay, config.layer_decay)
        self.opt = torch.optim.AdamW(groups, lr=self.lr, fused=fused)
        self.forward = torch.compile(self.model) if config.compile else self.model
        # What the loops read: images, or (linear probe without augmentation) backbone features once.
        # (Not for distilled DeiT: its two heads read the class and distillation tokens apart.)
        self.cached = (config.method == "head" and not config.augment and config.cache_features
                       and len(head_names(self.model)) == 1)
        self.train_all, self.test = self.train_images, self.test_images
        if self.cached:
            self.train_all, self.test = self.feature_cache(train), self.feature_cache(test)
            self.forward = self.model.head
        # The step's forward: DDP over what it calls under torchrun, else the same as evaluation's.
        self.train_forward = self.dist.wrap(self.forward, self.model.head if self.cached else self.model, self.device,
                                            compile=config.compile and not self.cached)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def feature_cache(self, images: data.Images) -> data.Images:
        """The pre-logit features of every image (eval crop) as an in-memory `Images` (N, d)."""
        f = extract(self.model, images, np.arange(len(images)), preprocess=self.pre, device=self.device)["prelogits"]
        return data.Images(torch.from_numpy(f).to(self.device), images.labels, images.num_classes)

    def inputs(self, x: torch.Tensor, train: bool, generator=None, within=None) -> torch.Tensor:
        if self.cached:
            return x
        if not (train and self.config.augment):
            return self.pre.eval(x)
        return data.transform(x, self.size, self.mean, self.std, True, generator, interpolation=self.pre.interpolation,
                              within=within)

    def train_epoch(self, idx: np.ndarray, epoch: int, step: int, total: int, warmup: int) -> dict:
        """One pass over `idx` in a seeded order; returns the epoch's mean loss/acc and speed."""
        c, model = self.config, self.model
        model.train()
        order = torch.from_numpy(idx)[torch.randperm(len(idx), generator=torch.Generator().manual_seed(
            c.seed * 100_003 + epoch))]
        aug = torch.Generator(device=self.device).manual_seed(c.seed * 100_003 + epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        shards = self.dist.shard(order, c.batch_size)  # (this rank's indices, first row, global size) per step
        start, n_steps = time.perf_counter(), len(shards)
        bar = progress.bar(n_steps, f"epoch {epoch + 1}", self.bars, unit="step")
        for i, ((x, y), (_, first, size)) in enumerate(
                zip(self.train_all.batches([s[0] for s in shards], self.device), shards)):
            for group in self.opt.param_groups:
                group["lr"] = self.lr * lr_schedule(step, total, warmup) * group.get("lr_scale", 1.0)
            with self.autocast():
                logits = self.train_forward(self.inputs(x, train=True, generator=aug, within=(first, size)))
                loss, batch_loss = self.dist.objective(logits.float(), y, size, c.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if c.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip_grad, foreach=True)
            self.opt.step()
            step += 1
            loss_sum += batch_loss
            correct += (logits.argmax(1) == y).sum()
            bar.update()
            if c.log_every and (i + 1) % c.log_every == 0:
                if self.bars:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                else:
                    self.log(f"  step {i + 1}/{n_steps}  loss {loss.item():.4f}")
        bar.close()
        loss_sum, correct = self.dist.all_sum(loss_sum, correct)  # over the ranks' slices
        seconds = time.perf_counter() - start
        return {"loss": loss_sum.item() / len(order), "acc1": 100 * correct.item() / len(order),
                "lr": self.opt.param_groups[0]["lr"], "seconds": seconds, "images_per_s": len(order) / seconds,
                "step": step}

    @torch.inference_mode()
    def evaluate(self, images: data.Images, idx: np.ndarray, batch_size: int = 1024) -> dict:
        """Mean loss, top-1 and top-5 accuracy (%) over `idx`, eval crop, no augmentation."""
        self.model.eval()
        k = min(5, images.num_classes)
        loss_sum = torch.zeros((), device=self.device)
        top1 = torch.zeros((), device=self.device)
        top5 = torch.zeros((), device=self.device)
        start = time.perf_counter()
        for x, y in images.batches(list(torch.from_numpy(idx).split(batch_size)), self.device):
            with self.autocast():
                logits = self.forward(self.inputs(x, train=False)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            hit = logits.topk(k, dim=1).indices == y[:, None]
            top1 += hit[:, 0].sum()
            top5 += hit.any(1).sum()
        seconds = time.perf_counter() - start
        n = len(idx)
        return {"loss": loss_sum.item() / n, "acc1": 100 * top1.item() / n, "acc5": 100 * top5.item() / n,
                "seconds": seconds, "images_per_s": n / seconds}

    def features(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return extract(self.model, self.test_images, idx, preprocess=self.pre, device=self.device,
                       blocks=self.config.block_features)


def train_run(config: Config, run_dir: Path, log=print) -> dict:
    """Train one configuration into `run_dir` (resuming if a checkpoint is there); returns the summary.

    The caller holds the run's claim (lock.py; `sweep.run_sweep` does). The writes come in an order
    that a kill between any two of them leaves resumable: config and split, then per epoch the
    train and val lines and the checkpoint; at the end the test line, features, adapter, summary
    (its presence marks the run finished) and last the checkpoint's removal.
    Under torchrun (distributed.py) every rank trains; rank 0 alone evaluates and writes.
    """
    config.validate()
    run_dir = Path(run_dir)
    dist = distributed.current()
    log = dist.main_only(log)
    runs.check_identity(run_dir, config)
    if runs.is_finished(run_dir):
        return json.loads((run_dir / "summary.json").read_text())
    t = Trainer(config, log)
    c = config
    metrics_path, ckpt_path = run_dir / "metrics.jsonl", run_dir / checkpoint.NAME
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.tidy(run_dir)
        if (run_dir / "checkpoint.pt").exists():  # an old pickle checkpoint: never loaded
            log(f"{run_dir.name}: set aside {runs.set_aside(run_dir / 'checkpoint.pt')} (pickle, not loaded)")

    # config.json + the validation split: written once, reused by a resumed run (and by ranks > 0).
    split_path = run_dir / "split.json"
    fixed = t.train_images.source.get("val_rows")  # a dataset's own validation rows (VTAB-1k), maybe none
    with dist.main_first():  # rank 0 writes it, the others read it
        if split_path.exists():
            split = json.loads(split_path.read_text())
            val_idx = np.array(split["val"], dtype=np.int64)
            train_idx = np.array(split["train"], dtype=np.int64) if "train" in split else np.setdiff1d(
                np.arange(len(t.train_all)), val_idx)
        else:
            if fixed is not None:
                val_idx = np.arange(*fixed, dtype=np.int64)
                train_idx = np.setdiff1d(np.arange(len(t.train_all)), val_idx)
                record = {"fixed": t.train_images.source.get("protocol")}
            else:
                train_idx, val_idx = data.split_indices(len(t.train_all), c.val_fraction, c.seed)
                record = {"seed": c.seed}
            if c.shots:  # K per class from what validation leaves, by the seed alone
                train_idx = data.few_shot_indices(t.train_all.labels.numpy(), train_idx, c.shots, c.seed)
            runs.write_json(split_path, {**record, "val": val_idx, **({"train": train_idx} if c.shots else {})})
    env = environment()
    if dist.main:
        runs.write_json(run_dir / "config.json", {**c.to_dict(), "resolved": {
            "device": str(t.device), "world_size": dist.world, "precision": t.precision, "input_size": t.size, "lr": t.lr,
            **t.backbone, "preprocess": t.pre.to_dict(), "features_precision": FEATURES_PRECISION,
            "mean": t.mean, "std": t.std, "num_classes": t.train_all.num_classes,
            "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(t.test),
            "data": {"train": t.train_images.source, "test": t.test_images.source}}, "env": env})
    feat_idx = data.feature_indices(len(t.test), c.feature_samples)

    steps_per_epoch = math.ceil(len(train_idx) / c.batch_size)
    total, warmup = c.epochs * steps_per_epoch, round(c.warmup_epochs * steps_per_epoch)
    epoch, step, best, best_state, train_seconds = 0, 0, -1.0, None, 0.0
    with dist.main_first():  # rank 0 reads (or sets aside) the checkpoint, then the others read what is left
        ck = resume(t, ckpt_path, log)
    frozen = None  # the frozen features: rank 0's
    if ck is not None:
        epoch, step, best, best_state, frozen, train_seconds = (
            ck["epoch"], ck["step"], ck["best_val_acc1"], ck["best"], ck["frozen"], ck["train_seconds"])
        if dist.main:
            runs.write_lines(metrics_path, epoch_lines(runs.read_lines(metrics_path), epoch))
        log(f"resuming {run_dir.name} after epoch {epoch}/{c.epochs}")
    elif dist.main:
        runs.remove(metrics_path)
        with disabled(t.model):  # the backbone's own features, whatever the method and its init
            frozen = t.features(feat_idx)

    status, reason = "complete", None
    epochs_bar = progress.bar(c.epochs, f"{run_dir.name}", t.bars, unit="epoch", initial=epoch)
    while epoch < c.epochs:
        tr = t.train_epoch(train_idx, epoch, step, total, warmup)
        step, epoch = tr.pop("step"), epoch + 1
        train_seconds += tr["seconds"]
        reason = diverged("training loss", tr["loss"]) or diverged_params(t.model)
        val = None
        if dist.main:
            runs.append_line(metrics_path, {"epoch": epoch, "split": "train", **tr})
            if reason is None and len(val_idx):
                val = t.evaluate(t.train_all, val_idx)
                runs.append_line(metrics_path, {"epoch": epoch, "split": "val", **val, "lr": tr["lr"]})
                reason = diverged("validation loss", val["loss"])
        reason = dist.from_main(reason)
        if reason is not None:
            status = "diverged"
            log(f"{run_dir.name}: {reason} at epoch {epoch}: diverged")
            break
        if val is None:  # no validation split (VTAB-1k's final run): the last epoch's weights
            best_state = trainable_state(t.model)
        elif val["acc1"] > best:
            best, best_state = val["acc1"], trainable_state(t.model)
        epochs_bar.update()
        log(f"{run_dir.name} epoch {epoch}/{c.epochs}  train loss {tr['loss']:.4f} acc {tr['acc1']:.2f}  "
            + (f"val acc {val['acc1']:.2f}  " if val else "") + f"{tr['images_per_s']:.0f} img/s")
        if dist.main:
            checkpoint.save(ckpt_path, trainable=trainable_state(t.model), best=best_state, frozen=frozen,
                            optimizer=t.opt.state_dict(), meta={
                                "epoch": epoch, "step": step, "best_val_acc1": best, "train_seconds": train_seconds,
                                "identity": c.identity()})
    epochs_bar.close()
    if not dist.main:  # rank 0 tests, writes features, adapter and summary
        dist.barrier()
        return json.loads((run_dir / "summary.json").read_text())

    summary = {"status": status, **t.counts, "train_seconds": train_seconds, "epochs_done": epoch,
               "best_val_acc1": best if best >= 0 else None}
    if status == "complete":
        t.model.load_state_dict(best_state, strict=False)  # model selection on validation only
        test = t.evaluate(t.test, np.arange(len(t.test)))  # the test split, touched once
        adapted = t.features(feat_idx)
        reason = diverged("test loss", test["loss"]) or next(
            (f"non-finite {kind} {k}" for kind, feats in (("frozen", frozen), ("adapted", adapted))
             for k, v in feats.items() if not np.isfinite(v).all()), None)
        if reason is not None:
            status = summary["status"] = "diverged"
            log(f"{run_dir.name}: {reason}: diverged")
    if status == "complete":
        runs.append_line(metrics_path, {"epoch": epoch, "split": "test", **test})
        arrays = {"frozen": frozen.pop("features"), "adapted": adapted.pop("features"),
                  "labels": t.test_images.labels[torch.from_numpy(feat_idx)].numpy(), "indices": feat_idx}
        for key in adapted:  # prelogits, block{i}
            arrays[f"frozen.{key}"], arrays[f"adapted.{key}"] = frozen[key], adapted[key]
        runs.save_arrays(run_dir / "features.safetensors", arrays)
        runs.save_arrays(run_dir / "adapter.safetensors",
                         {k: v.float().cpu().numpy() for k, v in best_state.items()},
                         metadata=inference.metadata(c, t.backbone["model"], t.classes, t.pre, env))
        summary.update(test_acc1=test["acc1"], test_acc5=test["acc5"], test_loss=test["loss"])
    else:
        summary["reason"] = reason
    runs.write_json(run_dir / "summary.json", summary)  # last: its presence marks the run as finished
    runs.remove(ckpt_path)
    dist.barrier()
    return summary


def resume(t: Trainer, path: Path, log) -> dict | None:
    """The checkpoint at `path` applied to `t`'s model and optimizer, or None to start afresh.

    A checkpoint that cannot be read or does not fit the model is set aside (renamed, logged) and
    the run restarts; one recorded under another identity is refused (UserError), never mixed.
    """
    if not path.exists():
        return None
    try:
        ck = checkpoint.load(path)
        differ = runs.identity_diff(ck["identity"], t.config.identity())
        if differ:
            raise UserError(f"{path}: a checkpoint of another configuration ({differ}); not resumed")
        shapes = {k: v.shape for k, v in trainable_state(t.model).items()}
        if any({k: v.shape for k, v in ck[part].items()} != shapes for part in ("trainable", "best")):
            raise checkpoint.Unreadable("its weights do not fit the model")
        t.opt.load_state_dict(ck["optimizer"])  # checks the groups before it changes anything
        t.model.load_state_dict(ck["trainable"], strict=False)
    except (checkpoint.Unreadable, ValueError, KeyError) as e:
        aside = runs.set_aside(path)
        log(f"{path.parent.name}: checkpoint unreadable ({e}); set aside as {aside.name}, restarting")
        return None
    return ck


def epoch_lines(rows: list[dict], epoch: int) -> list[dict]:
    """The metrics a resume after `epoch` keeps: each (epoch <= epoch, train|val) once, in order."""
    kept, seen = [], set()
    for row in rows:
        key = (row.get("epoch"), row.get("split"))
        if key[1] in ("train", "val") and isinstance(key[0], int) and key[0] <= epoch and key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def diverged(what: str, value: float) -> str | None:
    return None if math.isfinite(value) else f"{what} is {value}"


def diverged_params(model) -> str | None:
    params = [p for p in model.parameters() if p.requires_grad]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        return "non-finite parameters"
    return None


# `adaptertune.train(...)` is the public API's train (api.py), though this module bears its name.
from .aliases import callable_module  # noqa: E402

callable_module(__name__, "adaptertune.api:train")
