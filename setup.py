"""Build script for trp-ext: compiles ``trp_ext._C`` from ``csrc/``.

Environment variables (all optional):
  FORCE_CUDA=1          build the CUDA kernels even when torch or nvcc look unusable
  TRP_EXT_FORCE_CPU=1   build the CPU kernels only (wins over FORCE_CUDA)
  TORCH_CUDA_ARCH_LIST  CUDA archs, e.g. "9.0" or "8.0;9.0"; default: the visible GPUs, else 9.0
  MAX_JOBS              parallel compile jobs (ninja)
  TRP_EXT_DEBUG=1       -O0 -g builds

Build isolation must be off (``pip install --no-build-isolation .``): the extension links
against the torch that is already installed, and an isolated build would compile against a
different torch downloaded into a throw-away environment.
"""
import glob
import os
import shutil
import site
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH = "9.0"  # one arch keeps GPU-less builds short; the lent GPU is an H200 (sm_90)


def _is_toolkit(path):
    return bool(path) and os.path.exists(os.path.join(path, "bin", "nvcc")) and os.path.exists(
        os.path.join(path, "include", "cuda_runtime.h")
    )


def _guess_cuda_home():
    """Sets CUDA_HOME when it is unset and torch's own guess would be wrong.

    torch takes the parent of the `nvcc` on PATH, which is wrong when that nvcc is a wrapper
    script (here /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc): the build then finds
    no CUDA headers or libcudart. Must run before torch.utils.cpp_extension is imported.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc and _is_toolkit(os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))):
        return
    for candidate in ("/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)):
        if _is_toolkit(candidate):
            os.environ["CUDA_HOME"] = candidate
            return


_guess_cuda_home()

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised only on broken environments
    sys.exit(
        "trp-ext needs torch installed before it is built. Install torch first, then run\n"
        "    pip install --no-build-isolation .\n"
        "(build isolation would compile against a different torch than the one you run)."
    )

def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _nvcc_path():
    if CUDA_HOME is None:
        return None
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    return nvcc if os.path.exists(nvcc) else shutil.which("nvcc")


def _resolve_cuda():
    """Returns (use_cuda, reason)."""
    if _flag("TRP_EXT_FORCE_CPU"):
        return False, "TRP_EXT_FORCE_CPU=1"
    if _flag("FORCE_CUDA"):
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch was built without CUDA"
    if _nvcc_path() is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda} and nvcc at {_nvcc_path()}"


def _resolve_arch_list():
    """Honours TORCH_CUDA_ARCH_LIST; with none set and no GPU visible, builds one arch."""
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if arch:
        return arch, "TORCH_CUDA_ARCH_LIST"
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        arch = ";".join(f"{major}.{minor}" for major, minor in caps)
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        return arch, "visible GPUs"
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH
    return DEFAULT_ARCH, "default (no GPU visible)"


def _nvidia_wheel_include_dirs():
    """Headers of the pip-installed CUDA libraries (cuBLAS, cuSPARSE, cuSOLVER, ...).

    torch's CUDA headers include them, but a bare toolkit such as /usr/local/cuda here may lack
    them. CUDA 13 wheels put every library under nvidia/cu13/include; CUDA 12 wheels use one
    nvidia/<lib>/include folder per library.
    """
    # The folder holding torch first: its CUDA wheels were installed beside it.
    roots = [os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))]
    roots += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    roots += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    found = []
    for root in dict.fromkeys(roots):
        for path in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if path not in found:
                found.append(path)
    return found


def _openmp_flags():
    """-fopenmp when torch's intra-op parallelism is OpenMP, else nothing; and why.

    at::parallel_for is a header template: with torch's OpenMP backend it expands to a
    `#pragma omp parallel` in *our* objects, which a compiler without -fopenmp ignores, so every
    CPU kernel would silently run on one thread. The flag links libgomp.so.1, which resolves to
    the copy torch has already loaded (same soname), so the process keeps one OpenMP runtime.
    """
    info = torch.__config__.parallel_info()
    if "ATen parallel backend: OpenMP" not in info:
        return [], "not needed (torch's parallel backend is not OpenMP)"
    if sys.platform == "darwin":
        return [], "off (macOS compilers need a separate libomp)"
    if sys.platform == "win32":
        return ["/openmp"], "/openmp (torch's parallel backend is OpenMP)"
    return ["-fopenmp"], "-fopenmp (torch's parallel backend is OpenMP)"


def _shared_libstdcxx_flags():
    """Link flags that keep the C++ runtime shared with torch's, and why.

    torch runs on the shared libstdc++ (libstdc++.so.6). Our argument checks throw C++ exceptions
    that torch's own code catches and turns into Python errors; built with a private static
    copy of libstdc++, the extension throws with one runtime and torch catches with another. On
    the H200 machine's image (CXX=/opt/gcc/bin/g++, GCC 13.3) the build came out so, with no
    libstdc++.so.6 among its dependencies, and every bad-input test there died of a segmentation
    fault instead of raising. A compiler links the static copy when told to (-static-libstdc++ in LDFLAGS) or
    when only libstdc++.a is linkable; naming the shared runtime itself on the link line, ahead
    of the compiler's own -lstdc++, resolves every C++ runtime symbol from it either way.
    """
    if sys.platform in ("win32", "darwin"):
        return [], "not needed (no libstdc++ here)"
    compiler = os.environ.get("CXX", "c++").split()
    try:
        path = subprocess.run(compiler + ["-print-file-name=libstdc++.so.6"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return [], f"left to the compiler ({compiler[0]} could not be asked: {error})"
    if not os.path.isabs(path) or not os.path.exists(path):
        return [], f"left to the compiler ({compiler[0]} knows no libstdc++.so.6)"
    return [os.path.realpath(path)], f"shared, {os.path.realpath(path)}"


def _extension():
    use_cuda, cuda_reason = _resolve_cuda()
    debug = _flag("TRP_EXT_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = [os.path.join("csrc", name)
               for name in ("trp_ext.cpp", "factored_conv2d_call.cpp", "lowrank_project_batched.cpp")]
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc")]
    openmp, openmp_reason = _openmp_flags()
    libstdcxx, libstdcxx_reason = _shared_libstdcxx_flags()
    # -Wno-psabi: GCC notes that passing a 32-byte vector by value outside AVX code changed the ABI
    # in GCC 4.6, at every AVX2 kernel's always-inline helper (cpu/simd.h); they are never called
    # across that boundary. The note is raised where templates are instantiated, so a pragma in
    # the header cannot silence it.
    extra = {"cxx": opt + ["-fvisibility=hidden", "-Wno-psabi"] + openmp}
    settings = {
        "OpenMP": openmp_reason,
        "libstdc++": libstdcxx_reason,
        "torch": torch.__version__,
        "cuda kernels": f"{'ON' if use_cuda else 'OFF'} ({cuda_reason})",
        "MAX_JOBS": os.environ.get("MAX_JOBS", "(ninja default)"),
        "build type": "debug" if debug else "release",
    }
    if use_cuda:
        arch, arch_source = _resolve_arch_list()
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        wheel_includes = _nvidia_wheel_include_dirs()
        include_dirs += wheel_includes
        extra["cxx"].append("-DTRP_EXT_WITH_CUDA")
        extra["nvcc"] = opt + ["-DTRP_EXT_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
        settings["CUDA_HOME"] = CUDA_HOME
        settings["nvcc"] = _nvcc_path()
        settings["TORCH_CUDA_ARCH_LIST"] = f"{arch} ({arch_source})"
        settings["CUDA library headers"] = ", ".join(wheel_includes) or "(toolkit only)"
        ext_class = CUDAExtension
    else:
        ext_class = CppExtension
    print("trp-ext build settings:", file=sys.stderr)
    for key, value in settings.items():
        print(f"  {key:22s} {value}", file=sys.stderr)
    return ext_class(
        name="trp_ext._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=[] if sys.platform == "win32" else openmp + libstdcxx,
        py_limited_api=False,
    )


class BuildExtensionKeepingObjects(BuildExtension.with_options(use_ninja=True)):
    """Keeps object files in build/temp across builds.

    pip's editable installs otherwise compile in a fresh temporary folder every time, so ninja
    could never reuse an object and every rebuild would recompile every kernel.
    """

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "temp")


setup(
    packages=find_packages(include=["trp_ext", "trp_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtensionKeepingObjects},
)
