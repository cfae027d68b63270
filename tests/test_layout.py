"""The package's layout shows its architecture, and the imports keep to it.

The sub-packages form layers, lowest first (`LAYERS`): a module imports only
from its own layer and those below, never upwards; no modules import each
other in a cycle; and an import inside a function is there only to keep
TensorFlow out of import time: of a module that does not need it (the CLIs
parse their arguments first), or of a module that runs on JAX and PyTorch
too and uses TensorFlow only on that backend (`utils.backend`).
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "diffusion_keras")
LAYERS = ["config", "utils", "diffusion", "nn", "data", "sampling", "editing", "models", "export",
          "metrics", "training", "cli", "app"]  # fmt: skip
HEAVY = {"tensorflow", "keras"}


def modules():
    """`{module name: path}` of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
                module = relative.replace(os.sep, ".").removesuffix(".__init__")
                found[module] = path
    return found


def imports(path, known):
    """`[(target, local, line)]`: the package's modules (or heavy libraries)
    that a file imports, and whether inside a function."""
    tree = ast.parse(open(path).read())
    found = []

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                # `from diffusion_keras.sampling import guidance` imports a module.
                submodules = [f"{child.module}.{a.name}" for a in child.names
                              if f"{child.module}.{a.name}" in known]  # fmt: skip
                whole = len(submodules) == len(child.names)
                names = submodules if whole else [child.module] + submodules
            for name in names:
                root = name.split(".")[0]
                if name in known or root in HEAVY:
                    found.append((name if name in known else root, local, child.lineno))
            visit(child, inside)

    visit(tree, False)
    return found


def layer_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_sits_in_a_layer():
    stray = [m for m in modules() if m != "diffusion_keras" and layer_of(m) not in LAYERS]
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


def test_no_import_climbs_back_up_a_layer():
    known = modules()
    upward = []
    for module, path in known.items():
        if module == "diffusion_keras":
            continue  # the public API re-exports every layer
        rank = LAYERS.index(layer_of(module))
        for target, _, line in imports(path, known):
            if target in HEAVY:
                continue
            if target == "diffusion_keras":
                continue  # `__version__`, `register_keras_classes`: no layer
            if LAYERS.index(layer_of(target)) > rank:
                upward.append(f"{module}:{line} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    known = modules()
    graph = {m: {t for t, _, _ in imports(p, known) if t in known and t != m}
             for m, p in known.items()}  # fmt: skip
    # The package's __init__ maps names lazily; a sub-package's __init__ is its parent.
    for module in graph:
        graph[module].discard("diffusion_keras")
    cycles, state = [], {}

    def walk(module, stack):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                walk(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "\n".join(cycles)


def heavy_modules(known):
    """The modules that import TensorFlow or Keras when they are imported."""
    top = {m: {t for t, local, _ in imports(p, known) if not local} for m, p in known.items()}
    heavy = {m for m, targets in top.items() if targets & HEAVY}
    grew = True
    while grew:
        grew = False
        for module, targets in top.items():
            if module not in heavy and targets & heavy:
                heavy.add(module)
                grew = True
    return heavy


def imports_at_top(path, known, target):
    return any(t == target and not local for t, local, _ in imports(path, known))


def test_imports_inside_functions_only_defer_tensorflow():
    known = modules()
    heavy = heavy_modules(known)
    needless = []
    for module, path in known.items():
        for target, local, line in imports(path, known):
            if not local:
                continue
            defers = module not in heavy and (target in heavy or target in HEAVY)
            # TensorFlow where the Keras backend is TensorFlow, in a module
            # that does not import it at the top.
            per_backend = target == "tensorflow" and not imports_at_top(path, known, target)
            if not (defers or per_backend):
                needless.append(f"{module}:{line} imports {target} inside a function")
    assert not needless, "\n".join(needless)


def test_the_command_line_tools_parse_without_tensorflow():
    known = modules()
    heavy = heavy_modules(known)
    for module in ["diffusion_keras", "diffusion_keras.config", "diffusion_keras.cli.train",
                   "diffusion_keras.cli.generate"]:  # fmt: skip
        assert module not in heavy, f"importing {module} imports TensorFlow"
