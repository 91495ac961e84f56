"""Seeded fault injection into training: every fault ends with finite weights on disk, the newest
good checkpoint found, and a resumed run bitwise equal to an uninterrupted one (CPU).

Faults (each at a step drawn from ``random.Random(SEED)``, so a run is reproducible; set
``CLIPTK_FAULT_SEED`` to draw other steps):

* NaN / inf in the loss, in the gradients (a finite loss: an autograd hook, and ``0 * sqrt(x - x)``)
  and in the weights (corrupted between steps);
* SIGINT at a step, and a second SIGINT inside the ``trainer.pt`` and ``latest.json`` writes;
* SIGKILL (a forked child kills itself, so no ``finally`` runs) at a step, half-way through
  ``trainer.pt``, ``model.safetensors`` and ``latest.json``, between a checkpoint's rename and its
  manifest, in the swap of a step saved twice, and half-way through the final ``model.safetensors``;
* a full disk: ``RLIMIT_FSIZE`` lowered in a forked child at a step (no root needed), so the
  checkpoint's weights or trainer state cannot be written: the error names the file;
* a corrupted newest checkpoint (truncated, garbled, zero-byte, NaN weights) or manifest.

The fault points are code points reached deterministically (a callback at step k, the n-th write),
never timers, so no run is flaky. cliptk-micro on 16 tiny images, 8 steps a run, one thread.
:data:`TRIED` and :data:`SURVIVED` count the cases (the README's reliability section quotes them).
"""
from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import traceback
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import cliptk.train.checkpoint as C
import cliptk.train.run_dir as R   # the module that writes the final model.safetensors (patched in a child process)
from cliptk._util import atomic_path
from cliptk.data import ReIdDataset
from cliptk.losses import make_loss
from cliptk.models import load_model
from cliptk.train import CheckpointError, NonFiniteLossError, TrainConfig, find_checkpoint, find_weights, fit
from conftest import make_model

SEED = int(os.environ.get("CLIPTK_FAULT_SEED", "14"))
STEPS = 8                     # 2 epochs of 4 steps (16 images, batches of 4 pairs)
_rng = random.Random(SEED)


def _step() -> int:
    """A seeded fault step in [2, STEPS - 1] (a checkpoint before it, a step after it)."""
    return _rng.randint(2, STEPS - 1)


CFG = TrainConfig(batch_size=4, epochs=2, lr=2e-3, lr_end=2e-4, warmup_epochs=0.5, progress=False, seed=0,
                  eval_before=False, device="cpu", save_every_steps=1, keep_checkpoints=3)
#: every case: (id, kind, step); ids are unique, steps seeded
CASES: list[tuple[str, str, int]] = []


def _case(name: str, kind: str) -> tuple[str, str, int]:
    c = (name, kind, _step() if name != "in-resave-swap" else STEPS // 2)   # that one is at the epoch end
    CASES.append(c)
    return c


IN_PROCESS = [_case(n, "in-process") for n in (
    "nan-loss", "inf-loss", "nan-grad", "inf-grad", "nan-grad-sqrt0", "nan-weight", "inf-weight",
    "sigint", "sigint-twice-in-trainer.pt", "sigint-twice-in-latest.json")]
KILLED = [_case(n, "sigkill") for n in (
    "at-step", "in-trainer.pt", "in-model.safetensors", "in-latest.json", "before-latest.json", "in-resave-swap",
    "in-final-model")]
DISK_FULL = [_case(n, "disk-full") for n in ("at-weights", "at-trainer.pt")]
CORRUPT = [_case(n, "corrupt") for n in (
    "trainer.pt-truncated", "trainer.pt-zero-bytes", "weights-garbled", "weights-truncated", "weights-nan",
    "latest.json-garbage")]
TRIED = len(CASES)
SURVIVED = 0


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: forked children may not use the parent's OpenMP pool, and the same
    thread count everywhere keeps CPU results bitwise comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    print(f"\nfault injection (seed {SEED}): {SURVIVED}/{TRIED} faults survived")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> ReIdDataset:
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    rows = []
    for pid in range(8):
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        for j in range(2):
            a = np.zeros((32, 16, 3))
            a[:16], a[16:] = top, bottom
            Image.fromarray(np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)).save(root / f"{pid}_{j}.png")
            rows.append({"path": f"{pid}_{j}.png", "pid": pid, "camid": j})
    return ReIdDataset(root, pd.DataFrame(rows), name="faults")


def _model(seed: int = 0):
    return make_model("cliptk-micro", seed, image_only=True)


@pytest.fixture(scope="module")
def reference(data):
    """The uninterrupted run: its weights and its train rows."""
    model = _model()
    h = fit(model, data, CFG)
    assert len(h.steps) == STEPS
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, h.steps[["step", "loss", "lr", "logit_scale"]]


def _saves(record: list[int]):
    """A wrapper of checkpoint.save_checkpoint that records the steps of the saves that completed."""
    real = C.save_checkpoint

    def save(folder, model, state, keep, **kw):
        out = real(folder, model, state, keep, **kw)
        record.append(state["step"])
        return out
    return save


def _finite_on_disk(run: Path, injected: Path | None = None) -> None:
    """Every weights file cliptk left under ``run`` loads and is finite (a partial write may only
    be under a hidden temporary name; ``injected`` is the file a test corrupted itself)."""
    for folder, _, files in os.walk(run):
        for name in files:
            f = Path(folder) / name
            if not name.endswith(".safetensors") or f == injected:
                continue
            try:
                weights = load_file(str(f))
            except Exception:
                assert any(part.startswith(".") for part in f.relative_to(run).parts), f"unreadable {f}"
                continue
            assert all(torch.isfinite(v).all() for v in weights.values()), f"non-finite weights in {f}"


def _survived(run: Path, data, reference, saved: list[int], *, warn: str | None = None,
              injected: Path | None = None) -> None:
    """The checks every fault ends with: no non-finite weights on disk, the newest good checkpoint
    found, and a resumed run equal (bitwise) to the uninterrupted one (whose files are then clean
    too)."""
    global SURVIVED
    _finite_on_disk(run, injected)
    with warnings.catch_warnings():   # a bad latest.json warns here too; the resume below is checked for it
        warnings.simplefilter("ignore")
        found = find_checkpoint(run)
        good = [p for p in C.checkpoints(run) if _readable(p)]
    assert good, f"no good checkpoint in {run}"
    assert torch.load(good[0] / C.STATE, weights_only=True)["step"] == saved[-1], "not the newest good checkpoint"
    if warn is None:
        assert found == good[0]
    model = _model(seed=123)   # a different init: everything must come from the checkpoint
    if warn is None:
        h = fit(model, data, CFG.replace(output_dir=str(run)), resume=run)
    else:
        with pytest.warns(UserWarning, match=warn):
            h = fit(model, data, CFG.replace(output_dir=str(run)), resume=run)
    weights, steps = reference
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), f"resumed run differs at {k}"
    pd.testing.assert_frame_equal(h.steps[steps.columns], steps, check_exact=True)
    _finite_on_disk(run)
    assert C.load_checkpoint(find_checkpoint(run))[0]["step"] == STEPS
    SURVIVED += 1


def _readable(path: Path) -> bool:
    try:
        C.load_checkpoint(path)
        return True
    except CheckpointError:
        return False


def _at_step(step: int, action: Callable[[dict], None], event: str = "step_end"):
    def callback(e: dict) -> None:
        if e["event"] == event and e["step"] == step:
            action(e)
    return callback


# --------------------------------------------------------------------------- NaN / inf, SIGINT (in process)
class _Poison(torch.autograd.Function):
    """Identity forward; the backward fills the gradient with ``value`` (NaN or inf)."""

    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, ctx.value), None


class _FaultyLoss(torch.nn.Module):
    def __init__(self, mode: str, at: int):
        super().__init__()
        self.mode, self.at, self.calls = mode, at, 0
        self.inner = make_loss("infonce", label_smoothing=0.1)

    def forward(self, a, b, logit_scale, ids=None):
        self.calls += 1
        hit = self.calls == self.at
        if hit and self.mode in ("nan-grad", "inf-grad"):
            a = _Poison.apply(a, float("nan") if self.mode == "nan-grad" else float("inf"))
        loss = self.inner(a, b, logit_scale, ids=ids)
        if hit and self.mode == "nan-loss":
            loss = loss * float("nan")
        if hit and self.mode == "inf-loss":
            loss = loss + float("inf")
        if hit and self.mode == "nan-grad-sqrt0":
            loss = loss + 0 * torch.sqrt(a - a).sum()
        return loss


@pytest.mark.parametrize("name,kind,step", IN_PROCESS, ids=[f"{c[0]}@{c[2]}" for c in IN_PROCESS])
def test_in_process_fault(name, kind, step, data, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = CFG.replace(output_dir=str(run))
    saved: list[int] = []
    monkeypatch.setattr(C, "save_checkpoint", _saves(saved))
    if name in ("nan-loss", "inf-loss", "nan-grad", "inf-grad", "nan-grad-sqrt0"):
        with pytest.raises(NonFiniteLossError, match=f"optimizer step {step} ") as info:
            fit(_model(), data, cfg, loss_fn=_FaultyLoss(name, step))
        assert info.value.kind == ("loss" if name.endswith("loss") else "gradients")
    elif name in ("nan-weight", "inf-weight"):
        value = float("nan") if name == "nan-weight" else float("inf")

        def poison(e):
            with torch.no_grad():
                e["model"].visual.transformer.resblocks[0].mlp.c_fc.weight[1, 2] = value
        with pytest.raises(NonFiniteLossError, match="weights are not finite"):
            fit(_model(), data, cfg, callbacks=[_at_step(step, poison)])
    else:
        first = _at_step(step, lambda e: os.kill(os.getpid(), signal.SIGINT))
        if name != "sigint":   # the second Ctrl-C lands half-way through a checkpoint file
            target = C.STATE if "trainer.pt" in name else C.LATEST
            state = {"armed": False, "fired": False}

            def arm(e):
                os.kill(os.getpid(), signal.SIGINT)
                state["armed"] = True
            first = _at_step(step, arm)
            real_state, real_text = C.write_state, C.atomic_write_text

            def half_then_sigint(path: Path, payload: bytes) -> None:
                with atomic_path(path) as tmp:   # the tmp file is half written, then Ctrl-C: it must vanish
                    tmp.write_bytes(payload[: len(payload) // 2])
                    state["fired"] = True
                    os.kill(os.getpid(), signal.SIGINT)

            def write_state(st, path):
                if state["armed"] and not state["fired"] and target == C.STATE:
                    real_state(st, path)
                    data_ = Path(path).read_bytes()
                    Path(path).write_bytes(data_[: len(data_) // 2])
                    state["fired"] = True
                    os.kill(os.getpid(), signal.SIGINT)
                real_state(st, path)

            def write_text(path, text, **kw):
                if state["armed"] and not state["fired"] and Path(path).name == C.LATEST:
                    half_then_sigint(Path(path), text.encode())
                return real_text(path, text, **kw)
            monkeypatch.setattr(C, "write_state", write_state)
            monkeypatch.setattr(C, "atomic_write_text", write_text)
        h = fit(_model(), data, cfg, callbacks=[first])
        assert h.interrupted and h.steps["step"].max() == step
        monkeypatch.undo()
    _survived(run, data, reference, saved)


# --------------------------------------------------------------------------- SIGKILL and a full disk (forked)
def _in_child(fn: Callable[[], None]) -> int:
    """Run ``fn`` in a forked child (torch and the data already loaded: no start-up cost); return
    its wait status. The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _log_saves(log: Path):
    """In the child: append the step of every completed save to ``log`` (the parent's record)."""
    real = C.save_checkpoint

    def save(folder, model, state, keep, **kw):
        out = real(folder, model, state, keep, **kw)
        with open(log, "a") as f:
            f.write(f"{state['step']}\n")
            f.flush()
            os.fsync(f.fileno())
        return out
    C.save_checkpoint = save


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("name,kind,step", KILLED, ids=[f"{c[0]}@{c[2]}" for c in KILLED])
def test_sigkill(name, kind, step, data, reference, tmp_path):
    run, log = tmp_path / "run", tmp_path / "saves.log"

    def child():
        _log_saves(log)
        callbacks = []
        armed = {"on": False}

        def arm(e):
            armed["on"] = True
        if name == "at-step":
            callbacks.append(_at_step(step, lambda e: _die()))
        elif name == "in-resave-swap":   # Ctrl-C at an epoch end saves that step again: die inside the swap
            callbacks.append(_at_step(step, lambda e: os.kill(os.getpid(), signal.SIGINT), event="epoch_end"))
            real_replace = os.replace

            def replace(src, dst, *a, **kw):   # the child's own os module: it dies anyway
                real_replace(src, dst, *a, **kw)
                if Path(src).name == f"step-{step:08d}" and ".old-" in Path(dst).name:
                    _die()
            os.replace = replace
        elif name == "in-final-model":
            def save_model(model, path, metadata=None):
                with atomic_path(path) as tmp:
                    tmp.write_bytes(b"\0" * 1000)
                    _die()
            R.save_model = save_model
        else:
            callbacks.append(_at_step(step, arm))
            if name == "in-trainer.pt":
                real = C.write_state

                def write_state(st, path):
                    real(st, path)
                    if armed["on"]:
                        Path(path).write_bytes(Path(path).read_bytes()[:1000])
                        _die()
                C.write_state = write_state
            elif name == "in-model.safetensors":
                real_save = C.save_model

                def save_model(model, path, metadata=None):
                    real_save(model, path, metadata=metadata)
                    if armed["on"]:
                        Path(path).write_bytes(Path(path).read_bytes()[:500])
                        _die()
                C.save_model = save_model
            else:
                real_text = C.atomic_write_text

                def write_text(path, text, **kw):
                    if armed["on"] and Path(path).name == C.LATEST:
                        if name == "before-latest.json":
                            _die()
                        with atomic_path(path) as tmp:
                            tmp.write_text(text[: len(text) // 2])
                            _die()
                    return real_text(path, text, **kw)
                C.atomic_write_text = write_text
        fit(_model(), data, CFG.replace(output_dir=str(run)), callbacks=callbacks)

    status = _in_child(child)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child ended with status {status}"
    saved = [int(s) for s in log.read_text().split()]
    if name == "in-resave-swap":
        assert any(p.name.startswith(f".step-{step:08d}.old-") for p in (run / "checkpoints").iterdir())
    if name == "in-final-model":
        assert saved[-1] == STEPS and not (run / "model.safetensors").exists()
    _survived(run, data, reference, saved)


@pytest.mark.parametrize("name,kind,step", DISK_FULL, ids=[f"{c[0]}@{c[2]}" for c in DISK_FULL])
def test_full_disk(name, kind, step, data, reference, tmp_path):
    """RLIMIT_FSIZE (the largest file a process may write) lowered at step k: the next checkpoint
    write fails with an OSError naming the file, the previous checkpoint stays the newest."""
    run, log, result = tmp_path / "run", tmp_path / "saves.log", tmp_path / "result.json"
    probe = tmp_path / "probe"
    C.save_checkpoint(probe, _model(), {"step": 1, "epoch": 0, "optimizer": {}}, keep=1)
    weights_size = (probe / "step-00000001" / C.WEIGHTS).stat().st_size
    limit = weights_size // 2 if name == "at-weights" else weights_size + 4096   # trainer.pt holds 2x the weights

    def child():
        _log_saves(log)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG instead

        def full(e):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            fit(_model(), data, CFG.replace(output_dir=str(run)), callbacks=[_at_step(step, full)])
            outcome = {"error": None}
        except Exception as err:
            outcome = {"error": f"{type(err).__name__}: {err}", "oserror": isinstance(err, OSError)}
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))   # a soft limit may go back up to the hard one
        result.write_text(json.dumps(outcome))

    status = _in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status}"
    outcome = json.loads(result.read_text())
    assert outcome["error"] and outcome["oserror"], outcome
    want = C.WEIGHTS if name == "at-weights" else C.STATE
    assert f"could not write {run / 'checkpoints'}/.step-{step:08d}.tmp-" in outcome["error"], outcome["error"]
    assert f"/{want}: " in outcome["error"] and "previous one" in outcome["error"], outcome["error"]
    saved = [int(s) for s in log.read_text().split()]
    assert saved[-1] == step - 1
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]   # the partial save is gone
    _survived(run, data, reference, saved)


# --------------------------------------------------------------------------- a corrupted newest checkpoint
@pytest.mark.parametrize("name,kind,step", CORRUPT, ids=[f"{c[0]}@{c[2]}" for c in CORRUPT])
def test_corrupted_newest_checkpoint(name, kind, step, data, reference, tmp_path):
    run = tmp_path / "run"

    def stop(e):
        raise KeyboardInterrupt
    fit(_model(), data, CFG.replace(output_dir=str(run)), callbacks=[_at_step(step, stop)])
    newest = find_checkpoint(run)
    assert newest.name == f"step-{step:08d}"
    state, weights = newest / C.STATE, newest / C.WEIGHTS
    if name == "trainer.pt-truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
    elif name == "trainer.pt-zero-bytes":
        state.write_bytes(b"")
    elif name == "weights-garbled":
        weights.write_bytes(b"\x07garbage" * 64)
    elif name == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif name == "weights-nan":   # e.g. written by a version without the finite check
        w = load_file(str(weights))
        first = next(k for k, v in w.items() if v.is_floating_point())
        w[first] = torch.full_like(w[first], float("nan"))
        save_file(w, str(weights))
    if name == "latest.json-garbage":
        (run / "checkpoints" / C.LATEST).write_text("\x00{not json")
        _survived(run, data, reference, [step], warn=r"latest\.json is unreadable")
        return
    bad = newest / (C.STATE if name.startswith("trainer.pt") else C.WEIGHTS)
    with pytest.raises(CheckpointError, match=str(bad)):
        C.load_checkpoint(newest)
    _survived(run, data, reference, [step - 1], warn=rf"{bad}.*trying the previous checkpoint", injected=bad)


# --------------------------------------------------------------------------- a corrupted final model.safetensors
@pytest.mark.parametrize("cut", ["half", "tail-100", "zero-bytes"])
def test_a_corrupted_final_model_names_the_file_when_loaded(cut, data, tmp_path):
    """A run folder's final weights truncated after the run (a copy cut short, a full disk elsewhere):
    cliptk.models.load_model names the file instead of loading something."""
    run = tmp_path / "run"
    fit(_model(), data, CFG.replace(output_dir=str(run), max_steps=1, save_every_steps=None))
    final = run / C.WEIGHTS
    assert find_weights(run) == final
    raw = final.read_bytes()
    final.write_bytes({"half": raw[: len(raw) // 2], "tail-100": raw[:-100], "zero-bytes": b""}[cut])
    with pytest.raises((RuntimeError, ValueError, OSError), match=re.escape(str(final))):
        load_model("cliptk-micro", str(final), image_only=True)
