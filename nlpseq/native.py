"""nlpseq's native CPU kernels (``csrc/``): the LSTM layer and its decoding step, dropout
masks and the Adam step with clipping's norm, compiled on first use.

The C++ sources are built once per source / torch / Python version with the system's C++
compiler into a cache folder (``$NLPSEQ_CACHE`` or ``~/.cache/nlpseq``) and loaded as torch
operators ``torch.ops.nlpseq.*``: no build step at install time and no pybind11. Where it
cannot be built (no compiler, an unusual torch), :func:`load` warns once and returns False,
and the models and optimizer fall back to torch's own kernels. ``NLPSEQ_NATIVE=0`` turns it
off.

The cache folder is created private to the user (0700); one that another user owns or others
may write into is refused (with the warning, torch's kernels run), since every command loads
what it holds. A cached library that fails to load is built again, once; a failed build is
remembered (a ``.failed`` file per source, torch, CPU and compiler) instead of re-running the
compiler on every command. ``CXX`` may hold a command with arguments (``CXX="ccache g++"``).

Not ``torch.utils.cpp_extension.load``: its build lock is a bare file, so a build killed midway
(Ctrl-C, OOM) leaves every later process waiting on it forever, and importing it costs 0.1-0.4 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).resolve().parent / "csrc" / name
                for name in ("lstm.cpp", "dropout.cpp", "optim.cpp"))
_state: dict[str, bool] = {}


def cache_dir() -> Path:
    """Where built libraries live: ``native/`` in the cache root embeddings use
    (``$NLPSEQ_CACHE``, default ``~/.cache/nlpseq``; see ``EmbeddingsConfig.cache_dir``)."""
    return Path(os.environ.get("NLPSEQ_CACHE") or "~/.cache/nlpseq").expanduser() / "native"


def _cpu_flags() -> str:
    """The CPU's feature flags: the build targets this CPU (-march=native), so a cache shared
    between different machines must not hand one machine's build to another."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _compiler() -> list[str]:
    """The C++ compiler command: ``$CXX`` split as a shell would (``CXX="ccache g++"``), else
    ``c++`` or ``g++`` from the PATH."""
    if os.environ.get("CXX", "").strip():
        return shlex.split(os.environ["CXX"])
    found = shutil.which("c++") or shutil.which("g++")
    if found is None:
        raise RuntimeError("no C++ compiler found (install g++, or set CXX)")
    return [found]


def _private_folder(folder: Path) -> None:
    """Create ``folder`` readable by its owner only; refuse one that another user owns or
    that others may write into (they could plant a library that every command then loads)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise RuntimeError(f"the kernel cache {folder} belongs to another user; set "
                           "NLPSEQ_CACHE to a folder of your own")
    if info.st_mode & 0o002:
        raise RuntimeError(f"the kernel cache {folder} is writable by others; chmod 700 it "
                           "(and delete what you did not build there) or set NLPSEQ_CACHE")


def _compile_command(sources: tuple[Path, ...], target: Path) -> list[str]:
    from torch.utils import cpp_extension

    compiler = _compiler()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [*compiler, "-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp",
               # the loops call an exp made of plain arithmetic; these let them vectorise
               "-fno-trapping-math", "-fno-math-errno", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    if platform.machine() in ("x86_64", "AMD64"):
        command += ["-march=native", "-mprefer-vector-width=512"]
    else:
        command += ["-mcpu=native"]
    for include in cpp_extension.include_paths():
        command += ["-isystem", include]
    command += [*map(str, sources), "-o", str(target)]
    for lib in cpp_extension.library_paths():
        command += [f"-L{lib}", f"-Wl,-rpath,{lib}"]
    return command + ["-lc10", "-ltorch_cpu"]


def build(sources: tuple[Path, ...] = SOURCES) -> Path:
    """Compile ``sources`` into one shared library (if not already in the cache) and return
    its path.

    The build goes to a temporary file renamed into place, so concurrent processes (DDP ranks,
    parallel tests) never load a half-written library.
    """
    key = hashlib.sha256(b"".join(source.read_bytes() for source in sources))
    key.update(f"{torch.__version__} {sys.version} {platform.machine()} {_cpu_flags()}".encode())
    folder = cache_dir()
    suffix = sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"
    target = folder / f"nlpseq_native_{key.hexdigest()[:16]}{suffix}"
    _private_folder(folder)
    if target.exists():
        return target
    compiler = _compiler()
    key.update(" ".join(compiler).encode())
    failed = folder / f"nlpseq_native_{key.hexdigest()[:16]}.failed"
    if failed.exists():  # the same sources and compiler failed before: not again each command
        raise RuntimeError(f"{failed.read_text(encoding='utf-8').strip()} (an earlier build; "
                           f"delete {failed} to try again)")
    names = ", ".join(source.name for source in sources)
    print(f"native: compiling {names} into {folder} (once, about 20 s)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        partial = Path(scratch) / target.name
        command = _compile_command(sources, partial)
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            raise RuntimeError(f"cannot run the C++ compiler {command[0]}: {error}") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "error" in line]
            detail = lines[0] if lines else done.stderr.strip()[-300:]
            message = f"compiling {names} with {' '.join(compiler)} failed: {detail}"
            failed.write_text(message + "\n", encoding="utf-8")
            raise RuntimeError(message)
        os.replace(partial, target)
    return target


def _load_library() -> None:
    """Load the built library; one that fails to load (a damaged or foreign file in the
    cache) is deleted and built again, once."""
    path = build()
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError):
        Path(path).unlink(missing_ok=True)
        torch.ops.load_library(str(build()))


def load() -> bool:
    """Make ``torch.ops.nlpseq.*`` available; False (after one warning) if the library
    cannot be built here or ``NLPSEQ_NATIVE=0``."""
    if "ok" not in _state:
        _state["ok"] = False
        if os.environ.get("NLPSEQ_NATIVE", "1") == "0":
            return False
        try:
            _load_library()
            _state["ok"] = True
        except Exception as error:  # any failure here only costs speed
            warnings.warn(
                f"nlpseq: native CPU kernels unavailable ({error}); falling back to torch's "
                "LSTM and Adam and numpy dropout masks, which are slower", RuntimeWarning,
                stacklevel=2,
            )
    return _state["ok"]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside, the models run torch's own kernels (as with ``NLPSEQ_NATIVE=0``): what an
    ONNX export traces must be plain torch operators."""
    saved = _state.get("ok")
    _state["ok"] = False
    try:
        yield
    finally:
        if saved is None:
            _state.pop("ok", None)
        else:
            _state["ok"] = saved


def bf16_native(device_type: str) -> bool:
    """Whether bfloat16 autocast runs natively on this device: CUDA, or a CPU whose oneDNN
    computes bfloat16 (AVX512-BF16 or AMX). Elsewhere it is emulated, slower than float32,
    and oneDNN's LSTM refuses it outright, so the models run float32 there."""
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    if "bf16" not in _state:
        try:
            _state["bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            _state["bf16"] = False
    return _state["bf16"]


def bf16_autocast(device_type: str, requested: bool) -> torch.autocast:
    """bfloat16 autocast on ``device_type`` when ``requested`` and :func:`bf16_native`."""
    enabled = requested and bf16_native(device_type)
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


MAX_THREADS = 4  # beyond this, oneDNN's kernel (which splits each step) is left the work


def usable(rnn: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`lstm_layer` can run ``rnn`` (a one-layer ``nn.LSTM``) on ``x``: float32
    on CPU, no autocast other than bfloat16 (see :func:`bf16_products`), at most
    :data:`MAX_THREADS` threads, and the library loads."""
    return (
        isinstance(rnn, torch.nn.LSTM) and rnn.num_layers == 1 and rnn.bias
        and rnn.proj_size == 0 and x.device.type == "cpu" and x.dtype == torch.float32
        and (not torch.is_autocast_enabled("cpu") or bf16_products())
        and torch.get_num_threads() <= MAX_THREADS and load()
    )


def bf16_products() -> bool:
    """Whether the kernel runs its matrix products in bfloat16 (float32 accumulation): under
    CPU autocast to bfloat16. Everything between the products stays float32."""
    return torch.is_autocast_enabled("cpu") and \
        torch.get_autocast_dtype("cpu") == torch.bfloat16


def lstm_step(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w: torch.Tensor,
              bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step for a few rows, as in decoding: ``x`` (B, I), ``h`` and ``c`` (B, H)
    float32; ``w`` the packed ``[W_ih W_hh]`` (4H, I+H), float32 or bfloat16 (then ``x`` and
    ``h`` are rounded to bfloat16 for the products, accumulated in float32); ``bias`` (4H) is
    ``b_ih + b_hh``. Returns the new ``(h, c)``. No autograd."""
    h_new, c_new = torch.ops.nlpseq.lstm_step(x, h, c, w, bias)
    return h_new, c_new


def dropout_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """A float32 mask shaped like ``x``: 0 where dropped (each element with probability
    ``p``, to 1/65536), 1 / (keep rate) elsewhere; a function of ``seed`` alone."""
    return torch.ops.nlpseq.dropout_mask(x.detach(), p, seed)  # only its shape is read


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lengths, h0, c0, directions, bf16, save, *weights):
        w_ih, w_hh, b_ih, b_hh = (list(weights[k::4]) for k in range(4))
        out, final, final_c, w, xh, acts, cells = torch.ops.nlpseq.lstm_layer_forward(
            x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, bf16, save)
        ctx.save_for_backward(lengths, w, xh, acts, cells, c0)
        ctx.directions, ctx.bf16 = directions, bf16
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        ctx.mark_non_differentiable(final_c)
        return out, final, final_c

    @staticmethod
    def backward(ctx, dout, dfinal, _dfinal_c):
        dx, dw_ih, dw_hh, db = torch.ops.nlpseq.lstm_layer_backward(
            dout, dfinal, *ctx.saved_tensors, ctx.bf16)
        grads = []
        for k in range(ctx.directions):
            grads += [dw_ih[k], dw_hh[k], db[k], db[k]]
        return (dx, None, None, None, None, None, None, *grads)


def _run_layer(rnn: torch.nn.LSTM, x: torch.Tensor, lengths: torch.Tensor,
               h0: torch.Tensor | None, c0: torch.Tensor | None,
               replace: dict[str, torch.Tensor] | None = None):
    if not load():
        raise RuntimeError("nlpseq's native LSTM kernel is not available here")
    if any(s is not None and s.requires_grad for s in (h0, c0)):
        raise ValueError("the native LSTM layer gives initial states no gradient: detach them")
    suffixes = ["", "_reverse"][: 2 if rnn.bidirectional else 1]
    names = [f"{name}_l0{suffix}" for suffix in suffixes
             for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    replace = replace or {}
    weights = [replace[n] if n in replace else getattr(rnn, n) for n in names]
    # Without a backward pass to come (inference, evaluation) the kernel keeps nothing of the
    # steps: what it would save is several times the size of the output.
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *weights))
    # under autocast the weights would reach the kernel as they are: float32 (it rounds them)
    return _LSTMLayer.apply(x, lengths.to("cpu", torch.long), h0, c0, len(suffixes),
                            bf16_products(), save, *weights)


def lstm_layer(
    rnn: torch.nn.LSTM, x: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a one-layer (bidirectional) ``nn.LSTM`` over ``x`` (B, T, I) with per-row
    ``lengths`` (B,): outputs (B, T, D*H), zeros at padding, the backward direction starting
    at each row's last real token; and the final states (B, D*H): the forward direction's at
    each row's last real token, the backward one's at its first. Same results as ``rnn`` on
    packed sequences."""
    out, final, _ = _run_layer(rnn, x, lengths, None, None)
    return out, final


def lstm_stateful(
    rnn: torch.nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None,
    replace: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``rnn(x, state)`` for a one-layer, batch-first ``nn.LSTM`` on unpadded ``x`` (B, T, I),
    as a stateful language model calls it: ``state`` (h0, c0), each (D, B, H), carried from
    the previous window and detached (it gets no gradient), or None for zeros. ``replace``
    maps parameter names (``weight_hh_l0``) to tensors used in their place, as
    ``torch.func.functional_call`` would. Returns the outputs (B, T, D*H) and (h_n, c_n),
    each (D, B, H); c_n carries no gradient."""
    batch, steps = x.shape[:2]
    directions = 2 if rnn.bidirectional else 1

    def flat(s: torch.Tensor) -> torch.Tensor:  # (D, B, H) -> (B, D*H)
        return s.transpose(0, 1).reshape(batch, -1)

    def unflat(s: torch.Tensor) -> torch.Tensor:  # (B, D*H) -> (D, B, H)
        return s.view(batch, directions, -1).transpose(0, 1).contiguous()

    h0, c0 = (flat(state[0]), flat(state[1])) if state is not None else (None, None)
    lengths = torch.full((batch,), steps, dtype=torch.long)
    out, h_n, c_n = _run_layer(rnn, x, lengths, h0, c0, replace)
    return out, (unflat(h_n), unflat(c_n))
