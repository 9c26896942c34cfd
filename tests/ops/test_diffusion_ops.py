"""diffusion_step: the kernels against the reference, opcheck, torch.compile, errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_genmodels.diffusion import samplers as S
from lightning_genmodels.diffusion.schedules import alphas_cumprod, make_betas
from lightning_genmodels.ops import diffusion_step, load_library
from lightning_genmodels.ops.diffusion import _diffusion_step_ref
from tests.utils import DEVICES, requires_cuda

T = 1000


def make_table(sampler="ddpm", prediction="epsilon", variance="fixed_small", eta=0.5, steps=50,
               spacing="leading", schedule="linear", device="cpu"):
    timesteps = S.inference_timesteps(T, steps, spacing)
    abar = alphas_cumprod(make_betas(schedule, T))
    table = S.step_coefficients(abar, timesteps, sampler, prediction, variance, eta)
    return timesteps.to(device), table.float().to(device)


def sample_inputs(device: str):
    """(x, model_output, timestep, coef, seed_offset, clip_range) over samplers and shapes."""
    gen = torch.Generator().manual_seed(0)
    for sampler, prediction, shape, clip in [
        ("ddpm", "epsilon", (4, 1, 28, 28), 1.0),
        ("ddim", "v_prediction", (3, 2, 5, 7), 0.0),
        ("ddpm", "sample", (5, 3), 0.5),
        ("ddim", "epsilon", (1, 13), 2.0),
        ("ddpm", "epsilon", (0, 1, 4, 4), 1.0),
    ]:
        timesteps, table = make_table(sampler, prediction, device=device)
        n = shape[0]
        t = timesteps[torch.randint(0, len(timesteps), (n,), generator=gen)].to(device)
        x = torch.randn(shape, generator=gen).to(device)
        out = torch.randn(shape, generator=gen).to(device)
        so = S.seed_offset_tensor(2**63 + 7, 5, device)  # offset not a multiple of 4
        yield x, out, t, table, so, clip


@pytest.mark.parametrize("device", DEVICES)
def test_ext_matches_reference(device):
    for args in sample_inputs(device):
        ext = diffusion_step(*args, impl="ext")
        ref = diffusion_step(*args, impl="ref")
        assert ext.shape == args[0].shape and ext.device.type == device
        torch.testing.assert_close(ext, ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 9),
    dims=st.lists(st.integers(1, 9), min_size=0, max_size=3),
    sampler=st.sampled_from(S.SAMPLERS),
    prediction=st.sampled_from(S.PREDICTION_TYPES),
    variance=st.sampled_from(S.VARIANCE_TYPES),
    spacing=st.sampled_from(S.TIMESTEP_SPACINGS),
    eta=st.sampled_from([0.0, 0.3, 1.0]),
    steps=st.integers(1, T),
    clip=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 2**45),
    data_seed=st.integers(0, 2**31),
)
def test_property_ext_equals_reference(n, dims, sampler, prediction, variance, spacing, eta, steps, clip, seed,
                                       offset, data_seed):
    timesteps, table = make_table(sampler, prediction, variance, eta, steps, spacing)
    gen = torch.Generator().manual_seed(data_seed)
    t = timesteps[torch.randint(0, len(timesteps), (n,), generator=gen)]
    x = 3 * torch.randn((n, *dims), generator=gen)
    out = 3 * torch.randn((n, *dims), generator=gen)
    so = S.seed_offset_tensor(seed, offset, "cpu")
    ext = diffusion_step(x, out, t, table, so, clip, impl="ext")
    ref = diffusion_step(x, out, t, table, so, clip, impl="ref")
    # x̂_0 can reach |x| / √ᾱ_t ~ 500 before the step scales it back: allow its rounding
    torch.testing.assert_close(ext, ref, rtol=1e-5, atol=1e-4)


def test_noise_depends_on_position_only():
    """Splitting a batch (offset advanced by the first half's size) gives the same result."""
    timesteps, table = make_table("ddpm", eta=1.0)
    x, out = torch.randn(6, 1, 3, 3), torch.randn(6, 1, 3, 3)
    t = torch.full((6,), int(timesteps[3]))
    whole = diffusion_step(x, out, t, table, S.seed_offset_tensor(4, 100, "cpu"), 1.0, impl="ext")
    a = diffusion_step(x[:2], out[:2], t[:2], table, S.seed_offset_tensor(4, 100, "cpu"), 1.0, impl="ext")
    b = diffusion_step(x[2:], out[2:], t[2:], table, S.seed_offset_tensor(4, 118, "cpu"), 1.0, impl="ext")
    torch.testing.assert_close(torch.cat([a, b]), whole, rtol=0, atol=0)
    other = diffusion_step(x, out, t, table, S.seed_offset_tensor(5, 100, "cpu"), 1.0, impl="ext")
    assert not torch.equal(other, whole)


def test_noncontiguous_inputs():
    timesteps, table = make_table("ddim", eta=0.7)
    x = torch.randn(4, 1, 6, 6).transpose(2, 3)
    out = torch.randn(4, 1, 6, 6)[:, :, ::1, :]
    t = timesteps[:8:2].clone()
    so = S.seed_offset_tensor(1, 0, "cpu")
    torch.testing.assert_close(diffusion_step(x, out, t, table, so, 1.0, impl="ext"),
                               _diffusion_step_ref(x, out, t, table, so, 1.0), rtol=1e-5, atol=1e-5)


def test_opcheck():
    load_library()
    for args in sample_inputs("cpu"):
        torch.library.opcheck(torch.ops.lightning_genmodels.diffusion_step.default, args)


def test_works_under_torch_compile():
    load_library()
    timesteps, table = make_table("ddpm")
    x, out = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t, so = timesteps[:3].clone(), S.seed_offset_tensor(3, 8, "cpu")

    def two_steps(x, out, t, so):
        y = torch.ops.lightning_genmodels.diffusion_step(x, out, t, table, so, 1.0)
        return torch.ops.lightning_genmodels.diffusion_step(y, out, t, table, so, 1.0) * 2

    compiled = torch.compile(two_steps, backend="aot_eager", fullgraph=True)
    ref = _diffusion_step_ref(_diffusion_step_ref(x, out, t, table, so, 1.0), out, t, table, so, 1.0) * 2
    torch.testing.assert_close(compiled(x, out, t, so), ref, rtol=1e-5, atol=1e-5)


def _good(device="cpu"):
    timesteps, table = make_table(device=device)
    x = torch.randn(2, 1, 4, 4, device=device)
    return {"x": x, "model_output": torch.randn_like(x), "timestep": timesteps[:2].clone(), "coef": table,
            "seed_offset": S.seed_offset_tensor(0, 0, device), "clip_range": 1.0}


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"x": torch.randn(2, 1, 4, 4).double()}, TypeError, "x must be float32"),
        ({"model_output": torch.randn(2, 1, 4, 5)}, ValueError, "model_output must have the shape"),
        ({"model_output": torch.randn(2, 1, 4, 4).half()}, TypeError, "model_output must be float32"),
        ({"timestep": torch.zeros(3, dtype=torch.int64)}, ValueError, r"timestep must be \[N\] = \[2\]"),
        ({"timestep": torch.zeros(2, dtype=torch.int32)}, TypeError, "timestep must be int64"),
        ({"coef": torch.zeros(10, 5)}, ValueError, r"coef must be \[T, 6\]"),
        ({"seed_offset": torch.zeros(3, dtype=torch.int64)}, ValueError, "seed_offset must be"),
        ({"clip_range": -1.0}, ValueError, "clip_range must be >= 0"),
        ({"clip_range": float("nan")}, ValueError, "clip_range"),
        ({"x": [1.0]}, TypeError, "x must be a Tensor"),
    ],
)
@pytest.mark.parametrize("impl", ["ref", "ext"])
def test_bad_inputs_raise_clear_errors(change, error, match, impl):
    args = _good() | change
    with pytest.raises(error, match=match):
        diffusion_step(**args, impl=impl)


@pytest.mark.parametrize("bad_t", [-1, T])
def test_out_of_range_timesteps_raise(bad_t):
    """The wrapper checks on the host by default (on CUDA the kernel could only assert on the
    device); with check_timesteps=False the CPU kernel still raises."""
    args = _good()
    args["timestep"] = torch.tensor([5, bad_t])
    for impl in ("ext", "ref"):
        with pytest.raises(ValueError, match=rf"timestep\[1\] = {bad_t} is outside \[0, {T}\)"):
            diffusion_step(**args, impl=impl)
    with pytest.raises(RuntimeError, match=rf"timestep\[1\] = {bad_t} is outside \[0, {T}\)"):
        diffusion_step(**args, impl="ext", check_timesteps=False)


@pytest.mark.parametrize("offset", [-4, 2**62 - 16])
def test_noise_beyond_the_stream_raises(offset):
    """A negative offset used to give numbers from ext (stream position 2**64 - 4) that the
    reference did not; x has 32 values, so 2**62 - 16 runs past the stream's end."""
    args = _good() | {"seed_offset": torch.tensor([1, offset])}
    for impl in ("ext", "ref"):
        with pytest.raises(ValueError, match=r"offset must be an integer in \[0, 2\*\*62 - numel\]"):
            diffusion_step(**args, impl=impl)
    with pytest.raises(RuntimeError, match=r"offset must be in \[0, 2\*\*62 - numel\] \(numel = 32\)"):
        diffusion_step(**args, impl="ext", check_timesteps=False)


def test_sampling_loop_never_reads_timesteps_on_the_host(monkeypatch):
    """The loop's steps skip the host check (a CUDA sync per step); its timesteps come from the schedule."""
    import lightning_genmodels.ops.diffusion as D

    def no_host_read(*args):
        raise AssertionError("the sampling loop read its timesteps on the host")

    monkeypatch.setattr(D, "_check_timestep_range", no_host_read)
    monkeypatch.setattr(D, "_check_noise_range", no_host_read)
    timesteps, table = make_table("ddim")
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    out = S.sample_loop(model, [2, 1, 4, 4], 0, timesteps[:3], table, 0, 1.0, "ext")
    assert out.shape == (2, 1, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(AssertionError, match="read its timesteps"):
        diffusion_step(**_good(), impl="ext")


def test_kernel_checks_its_inputs():
    """The op itself (not only the Python wrapper) names bad arguments."""
    load_library()
    a = _good()
    op = torch.ops.lightning_genmodels.diffusion_step
    with pytest.raises(RuntimeError, match="model_output must have the shape of x"):
        op(a["x"], a["x"][:1], a["timestep"], a["coef"], a["seed_offset"], 1.0)
    with pytest.raises(RuntimeError, match="seed_offset must be an int64 tensor"):
        op(a["x"], a["model_output"], a["timestep"], a["coef"], a["seed_offset"].int(), 1.0)
    with pytest.raises(RuntimeError, match="coef must be float32"):
        op(a["x"], a["model_output"], a["timestep"], a["coef"].double(), a["seed_offset"], 1.0)


@requires_cuda
def test_mixed_devices_raise():
    args = _good() | {"coef": _good()["coef"].cuda()}
    with pytest.raises(ValueError, match="coef must be on the device of x"):
        diffusion_step(**args, impl="ext")


@requires_cuda
def test_cpu_and_cuda_agree():
    cpu = _good("cpu") | {"clip_range": 0.5}
    gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in cpu.items()}
    torch.testing.assert_close(diffusion_step(**gpu, impl="ext").cpu(), diffusion_step(**cpu, impl="ext"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["auto", "ext"])
def test_gradients_come_from_the_reference_or_an_error(impl):
    args = _good()
    out = args["model_output"].clone().requires_grad_()
    call = lambda: diffusion_step(**{**args, "model_output": out}, impl=impl)  # noqa: E731
    if impl == "ext":
        with pytest.raises(ValueError, match="no backward"):
            call()
    else:
        call().sum().backward()
        assert out.grad is not None and torch.isfinite(out.grad).all()



def test_the_kernel_choice_sees_the_device(monkeypatch):
    """use_ext is told x's device, as for the other ops: with a library built without CUDA, CUDA
    tensors then take the reference ('auto') or raise ('ext') instead of reaching the CPU-only op."""
    from lightning_genmodels.ops import build
    from lightning_genmodels.ops import diffusion as D

    seen = []
    monkeypatch.setattr(D, "use_ext", lambda impl, device=None, inputs=(): seen.append(device) or
                        build.use_ext(impl, device, inputs))
    diffusion_step(**_good(), impl="ext")
    assert seen == [torch.device("cpu")]


@requires_cuda
def test_cuda_tensors_fall_back_when_built_without_cuda(monkeypatch):
    import dataclasses

    from lightning_genmodels.ops import ExtensionBuildError, build

    monkeypatch.setattr(build, "_info", dataclasses.replace(load_library(), with_cuda=False))
    monkeypatch.setattr(build, "_warned", set())
    gpu = _good("cuda")
    with pytest.warns(RuntimeWarning, match="built without CUDA"):
        got = diffusion_step(**gpu, impl="auto")
    torch.testing.assert_close(got, diffusion_step(**gpu, impl="ref"), rtol=0, atol=0)
    with pytest.raises(ExtensionBuildError, match="without CUDA"):
        diffusion_step(**gpu, impl="ext")


def test_unet_op_refuses_forward_mode_tangents():
    """A forward-AD dual input: RuntimeError, as for an input requiring grad (the op dropped the
    tangent: a zero jvp, silently)."""
    from lightning_genmodels.diffusion.unet import UNet, timestep_embedding
    from lightning_genmodels.ops import unet_sample_forward

    net = UNet(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2).eval()
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([5])
    with torch.no_grad():
        b = net._folded_biases(net.time_mlp(timestep_embedding(t, 8)))
    call = lambda x: unet_sample_forward(x, net.sampling_weights(), b, [2, 1, 4, 2], net.norm_out.eps)  # noqa: E731
    with torch.no_grad(), pytest.raises(RuntimeError, match="has no gradient"):
        torch.func.jvp(call, (x,), (torch.ones_like(x),))


def test_unet_op_loads_the_library_on_first_use(tmp_path):
    """unet_sample_forward in a fresh process, before any other op: no AttributeError."""
    import subprocess
    import sys

    code = ("import torch; from lightning_genmodels.diffusion.unet import UNet, timestep_embedding; "
            "from lightning_genmodels.ops import unet_sample_forward; "
            "net = UNet(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2).eval(); "
            "x = torch.randn(2, 1, 28, 28); t = torch.tensor([5])\n"
            "with torch.no_grad():\n"
            "    b = net._folded_biases(net.time_mlp(timestep_embedding(t, 8)))\n"
            "    out = unet_sample_forward(x, net.sampling_weights(), b, [2, 1, 4, 2], net.norm_out.eps)\n"
            "    torch.testing.assert_close(out, net(x, t.expand(2)), rtol=1e-4, atol=1e-4)\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_reference_traces_under_torch_compile(sampler):
    """impl='ref' (and 'auto' without a library) failed under torch.compile(fullgraph=True): the
    reference read seed_offset and the timesteps on the host. Traced, it takes the same noise
    from seed_offset on the device: the eager reference's and the kernel's numbers."""
    timesteps, table = make_table(sampler)
    x, out = torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)
    t, so = timesteps[:3].clone(), S.seed_offset_tensor(2**64 - 5, 4 * 7 + 3, "cpu")  # an offset mid-block

    def two_steps(x, out, t, so):
        y = diffusion_step(x, out, t, table, so, 1.0, impl="ref")
        return diffusion_step(y, out, t, table, so, 1.0, impl="ref") * 2

    compiled = torch.compile(two_steps, backend="aot_eager", fullgraph=True)
    ref = _diffusion_step_ref(_diffusion_step_ref(x, out, t, table, so, 1.0), out, t, table, so, 1.0) * 2
    torch.testing.assert_close(compiled(x, out, t, so), ref, rtol=1e-6, atol=1e-6)
    assert compiled(x, out, t, so).equal(compiled(x, out, t, so))
