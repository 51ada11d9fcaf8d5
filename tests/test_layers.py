"""The package's layering: imports go one way only, none hides inside a function, any import order works.

    base (_numerics, _extension, distributed) -> dispatch, _validate -> reference, kernels -> ops -> functional
    -> nn -> compat -> train -> info / the package's __init__

A module may import its own layer and the layers below it, never one above (an upward import is how import
circles start), and it imports augcl modules at module level only: an import moved into a function to dodge a
circle hides the circle instead of removing it. With both rules, an acyclic module-level import graph means any
import order works (checked on the graph; a fresh interpreter per module would take minutes). The Triton kernels are the one lazy import (augcl.dispatch
imports them with importlib on first use, so TRITON_INTERPRET can be set after ``import augcl``).
"""
import ast
import pathlib
import subprocess
import sys

import pytest
import torch

import augcl.functional as AF

ROOT = pathlib.Path(__file__).resolve().parent.parent

# rank of each layer: a module imports only modules of its own rank or lower
LAYERS = [
    ("augcl._numerics", 0), ("augcl._version", 0), ("augcl._extension", 0), ("augcl.distributed", 0),
    ("augcl.dispatch", 1), ("augcl._validate", 1),
    ("augcl.reference", 2), ("augcl.kernels", 2),
    ("augcl.ops", 3),
    ("augcl.functional", 4),
    ("augcl.nn", 5),
    ("augcl.compat", 6), ("augcl.patch", 6),
    ("augcl.train", 7),
    ("augcl.info", 8), ("augcl.train.__main__", 8), ("augcl", 8),  # entry points and the package itself
]


def _rank(module: str) -> int:
    """Rank of the longest layer prefix of ``module`` (``augcl`` itself is the top: its __init__ imports all)."""
    best, rank = -1, None
    for prefix, r in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
            best, rank = len(prefix), r
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def _modules():
    """(module name, path) of every Python file of the package, kernels/ installed as augcl.kernels."""
    for base, prefix in ((ROOT / "augcl", "augcl"), (ROOT / "kernels", "augcl.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join([prefix] + parts), path


def _imports(module: str, path: pathlib.Path):
    """(imported augcl module, line, inside a function?) for every import statement of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names if a.name.split(".")[0] == "augcl")
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative import: resolve against this module's package
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                if base.split(".")[0] == "augcl":
                    # `from augcl import functional` imports the submodule augcl.functional; `from augcl.x import
                    # name` imports augcl.x (see _resolve): keep base.name and resolve it against the module list
                    names = [f"{base}.{a.name}" for a in child.names]
                    out.extend((n, child.lineno, in_function) for n in names)
            visit(child, inner)

    visit(tree, False)
    return out


MODULES = list(_modules())


def test_layers_cover_every_module():
    assert len(MODULES) > 40
    for module, _ in MODULES:
        _rank(module)


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_down_only_and_at_module_level(module, path):
    mine = _rank(module)
    for target, line, in_function in _imports(module, path):
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        assert not in_function, f"{where} inside a function: import it at module level (no hidden circles)"
        if target.startswith(module + ".") or module == "augcl":
            continue  # a package's __init__ re-exports its own submodules
        assert _rank(target) <= mine, f"{where}, a layer above {module} (rank {_rank(target)} > {mine})"


def test_the_checker_catches_upward_and_hidden_imports(tmp_path):
    """The test above can fail: an upward import and an import inside a function are both reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from augcl.nn import NTXentLoss\n\ndef f():\n    import augcl.train\n")
    found = _imports("augcl.ops.bad", bad)
    assert ("augcl.nn.NTXentLoss", 1, False) in found and ("augcl.train", 4, True) in found
    assert _rank("augcl.nn") > _rank("augcl.ops.bad")


def _resolve(target: str, names: set) -> str:
    """The module an import statement loads: ``target`` itself, or for ``from pkg import name`` where name is not a
    submodule, the package ``pkg`` (its __init__ runs)."""
    while target not in names and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def test_import_graph_has_no_cycle():
    """With every augcl import at module level, a cycle in this graph is exactly what can make an import order fail
    (a module reading a name from a partially initialised one). None may exist, so every import order works.
    A package's own __init__ importing its submodules is an edge like any other."""
    names = {m for m, _ in MODULES}
    graph = {m: {_resolve(t, names) for t, _, _ in _imports(m, p)} - {m} for m, p in MODULES}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_cycle_check_can_fail(monkeypatch):
    fake = {"augcl.a": {"augcl.b"}, "augcl.b": {"augcl.a"}}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", [(m, None) for m in fake])
    monkeypatch.setattr(sys.modules[__name__], "_imports", lambda m, p: [(t, 1, False) for t in fake[m]])
    with pytest.raises(AssertionError, match="import cycle: augcl.a -> augcl.b -> augcl.a"):
        test_import_graph_has_no_cycle()


def test_import_augcl_in_a_fresh_interpreter():
    out = subprocess.run([sys.executable, "-c", "import augcl.functional.swav, augcl; print(augcl.__version__)"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


META_CALLS = {
    "nt_xent_multiview": lambda F: F.nt_xent_multiview([_meta(4, 8)] * 3),
    "sinkhorn": lambda F: F.sinkhorn(_meta(8, 5)),
    "swav_loss": lambda F: F.swav_loss([_meta(8, 5), _meta(8, 5)]),
    "hallucinate": lambda F: F.hallucinate(_meta(5, 4), _meta(5, 4), 0.05, _meta(6, 8), _meta(6), _meta(6, 6),
                                           _meta(6), _meta(4, 6), _meta(4)),
    "mix_images": lambda F: F.mix_images(_meta(3, 2, 4, 4), _meta(3), _meta(3, dtype=torch.bool),
                                         _meta(3, 4, dtype=torch.long), _meta(3, dtype=torch.long)),
    "unmix_info_nce": lambda F: F.unmix_info_nce(_meta(4, 8), _meta(4, 8), _meta(4, 8), 0.5, queue=_meta(6, 8)),
    "unmix_nt_xent": lambda F: F.unmix_nt_xent(_meta(4, 8), _meta(4, 8), _meta(4, 8), 0.5),
    "topk_attention": lambda F: F.topk_attention(_meta(2, 3, 10, 8), _meta(2, 3, 10, 8), _meta(2, 3, 10, 8), 4),
}


@pytest.mark.parametrize("name", sorted(META_CALLS))
def test_meta_tensors_run_shape_checks_only(name):
    """Every family on meta tensors (shape inference, FakeTensor tracing): the value checks, which would read
    values that do not exist, are skipped; the result has the documented shape on the meta device (the
    contrastive losses are covered in tests/test_contrastive.py)."""
    out = META_CALLS[name](AF)
    assert out.device.type == "meta"


def test_no_module_imports_another_modules_private_names():
    """Shared helpers are package-internal functions without a leading underscore (augcl/_validate.py,
    augcl/_numerics.py, ...): `from augcl.x import _name` reaches into another module's private code."""
    names = {m for m, _ in MODULES}
    for module, path in MODULES:
        for target, line, _ in _imports(module, path):
            last = target.rsplit(".", 1)[-1]
            if last.startswith("_") and target not in names and not last.startswith("__"):
                raise AssertionError(f"{path.relative_to(ROOT)}:{line} imports the private name {target}")
