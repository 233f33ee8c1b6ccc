import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

PACK = "lipar_pack"   # the name the tests give the repository when importing it as ComfyUI does: a package


def _import_pack():
    """Import the repository as a package (as ComfyUI imports ``custom_nodes/<folder>``), so the nodes
    import the library relatively (``from ..lipar.sampler import ...``). The tests' own top-level
    ``lipar`` stands in for the package's ``lipar`` subpackage, so nodes and tests share one set of
    classes (``LiparError``, ``PruningPlan`` ...) instead of two copies of the library."""
    import importlib
    import importlib.util
    import pkgutil

    import lipar

    for info in pkgutil.iter_modules(lipar.__path__):
        if info.name != "__main__":
            importlib.import_module("lipar." + info.name)
    for name, mod in list(sys.modules.items()):
        if name == "lipar" or name.startswith("lipar."):
            sys.modules[PACK + "." + name] = mod
    spec = importlib.util.spec_from_file_location(PACK, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    pack.lipar = lipar
    sys.modules[PACK] = pack
    spec.loader.exec_module(pack)
    return pack


_import_pack()


@pytest.fixture(scope="session")
def tiny64():
    """The tiny Wan config in float64 with every parameter perturbed away from its init."""
    import lipar

    m = lipar.build_model(lipar.TINY, seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m
