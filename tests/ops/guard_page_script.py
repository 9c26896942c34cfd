"""Every CPU GMM / rows op on x whose storage ends at an unreadable page (as an np.memmap or a
torch.frombuffer tensor can): a kernel that reads past x's last element dies with SIGSEGV. Run
by tests/ops/test_guard_page.py in a subprocess; prints "ok <case>" per case, results held to
the references."""
from __future__ import annotations

import ctypes
import mmap
import sys

import torch

from lightning_genmodels.ops import gmm_em_stats, gmm_log_prob, rows_dot, sq_norms
from lightning_genmodels.ops.gmm import COVARIANCE_TYPES, force_cpu_isa
from tests.ops.gmm_cases import assert_stats_close, make_params, make_x

LIBC = ctypes.CDLL(None)
LIBC.mmap.restype = ctypes.c_void_p
LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
LIBC.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def at_page_end(x: torch.Tensor) -> torch.Tensor:
    """A copy of x whose last byte is the last readable one: the next page is PROT_NONE."""
    nbytes = x.numel() * x.element_size()
    pages = (nbytes + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    base = LIBC.mmap(None, (pages + 1) * mmap.PAGESIZE, 3, 0x22, -1, 0)  # read/write, private anonymous
    assert LIBC.mprotect(base + pages * mmap.PAGESIZE, mmap.PAGESIZE, 0) == 0
    buf = (ctypes.c_char * nbytes).from_address(base + pages * mmap.PAGESIZE - nbytes)
    out = torch.frombuffer(buf, dtype=x.dtype).view(x.shape)
    out.copy_(x)
    return out


def main(isa: str) -> None:
    with force_cpu_isa(isa):
        for dtype in (torch.float32, torch.float64):
            for n, d, k in ((5, 3, 1), (37, 13, 4), (130, 50, 10), (70, 70, 3), (9, 785, 2)):
                for cov in COVARIANCE_TYPES:
                    lw, mu, pc = make_params(k, d, cov, dtype, "cpu", seed=n)
                    x = make_x(n, mu, seed=d)
                    guarded = at_page_end(x)
                    got = gmm_em_stats(guarded, lw, mu, pc, cov, impl="ext")
                    assert_stats_close(got, gmm_em_stats(x, lw, mu, pc, cov, impl="ref"), dtype)
                    torch.testing.assert_close(gmm_log_prob(guarded, lw, mu, pc, cov, impl="ext"),
                                               gmm_log_prob(x, lw, mu, pc, cov, impl="ref"), rtol=1e-4, atol=1e-3)
                    print(f"ok {isa} {dtype} {n}x{d} K={k} {cov}", flush=True)
                guarded = at_page_end(x)
                torch.testing.assert_close(sq_norms(guarded, impl="ext"), sq_norms(x, impl="ref"))
                torch.testing.assert_close(rows_dot(guarded, mu, impl="ext"), rows_dot(x, mu, impl="ref"),
                                           rtol=1e-4, atol=1e-3)
                print(f"ok {isa} {dtype} {n}x{d} rows", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
