"""The code's layout, checked on the source (nothing is imported): no module overwrites or mutates
another module's globals (a backend is chosen through the runner's interface, an owner check
registered with the store), dependencies point one way (app → influence → datasets), and
app/views holds the pages only."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "influence", "datasets", "benchmarks")
MUTATORS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear",
            "remove", "discard", "add"}


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def project_modules() -> set[str]:
    """Top-level names that import code of this project (benchmarks import their siblings)."""
    return set(PACKAGES) | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}


def imported_names(tree: ast.AST, ours: set[str]) -> set[str]:
    """The names a module binds by importing this project's modules or their members."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names
                      if a.name.split(".")[0] in ours}
        elif isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0] in ours):
            names |= {a.asname or a.name for a in node.names}
    return names


def bound_here(scope: ast.AST) -> set[str]:
    """Names a function (or the module) binds other than by importing: they shadow imports."""
    names = set()
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = scope.args
        names |= {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    body = scope.body if isinstance(scope.body, list) else [scope.body]
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def root_name(target: ast.AST) -> str | None:
    """`a` of a.b, a.b[c], a[b].c …; None when the chain passes through a call (an object
    made at run time, not a module's global)."""
    while isinstance(target, (ast.Attribute, ast.Subscript)):
        target = target.value
    return target.id if isinstance(target, ast.Name) else None


def targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        found = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        found = [node.target]
    elif isinstance(node, ast.Delete):
        found = node.targets
    else:
        return []
    flat = []
    while found:
        first, *found = found
        if isinstance(first, (ast.Tuple, ast.List, ast.Starred)):
            found = [*(first.elts if not isinstance(first, ast.Starred) else [first.value]),
                     *found]
        else:
            flat.append(first)
    return flat


def foreign_writes(source: str, ours: set[str]) -> list[str]:
    """Each statement of `source` that assigns to (or deletes, or mutates in place) an
    attribute or item of a module of this project, or of a name imported from one."""
    tree = ast.parse(source)
    imported = imported_names(tree, ours)
    found = []

    def visit(scope: ast.AST, shadowed: set[str]) -> None:
        local = shadowed | bound_here(scope)
        for node in _own_nodes(scope):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(node, local)  # a closure sees the names its function binds
                continue
            for target in targets(node):
                name = root_name(target)
                if isinstance(target, (ast.Attribute, ast.Subscript)) and name in imported \
                        and name not in local:
                    found.append(f"line {node.lineno}: {ast.unparse(target)}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in MUTATORS and isinstance(node.func.value, ast.Attribute):
                name = root_name(node.func.value)
                if name in imported and name not in local:
                    found.append(f"line {node.lineno}: {ast.unparse(node.func)}(…)")

    visit(tree, set())
    return found


def _own_nodes(scope: ast.AST):
    """The nodes of a scope, and the functions defined in it without their insides."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def test_the_check_finds_what_it_looks_for():
    """The guard: the writes this layout forbids are found, ordinary ones are not."""
    bad = """
from app.services import jobs, store as stores
from .store import OWNER_CHECKS
import influence.runs
from influence import runs
jobs.REMOTE = object()
stores.OWNER_CHECKS["ray"] = print
OWNER_CHECKS["ray"] = print
influence.runs.EXECUTOR = None
def later(run):
    runs.EXECUTOR, x = None, 1
    stores.OWNER_CHECKS.pop("ray")
"""
    assert len(foreign_writes(bad, set(PACKAGES))) == 6, foreign_writes(bad, set(PACKAGES))
    fine = """
import os
from app.services import runner, store as stores
from influence import runs
os.environ["X"] = "1"
runner.use(None)
stores.register_owner("ray", print)
def f(runs, job):
    runs[0] = 1
    job.result["run"] = 2
    runner.latest("s").result["x"] = 3
"""
    assert foreign_writes(fine, set(PACKAGES)) == []


def test_no_module_overwrites_another_modules_globals():
    ours = project_modules()
    found = {str(p.relative_to(ROOT)): writes for p in sources(*PACKAGES)
             if (writes := foreign_writes(p.read_text(), ours))}
    assert found == {}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    return names


def test_dependencies_point_one_way():
    """app → influence → datasets: the engine never imports the app, Streamlit or SQLite (a
    notebook can use it), and the data sets never import the engine."""
    for path in sources("influence"):
        assert not imports_of(path) & {"app", "streamlit", "sqlite3"}, path
    for path in sources("datasets"):
        assert not imports_of(path) & {"app", "influence", "streamlit", "sqlite3"}, path


def test_one_holm_correction():
    """Holm's correction is influence.compare.holm wherever p-values are corrected."""
    calling = {str(p.relative_to(ROOT)) for p in sources(*PACKAGES)
               if "multipletests(" in p.read_text()}
    assert calling == {"influence/compare.py"}


APP_BENCHMARKS = {"flow.py", "estimates.py"}  # they time the app's own flow and estimates


def test_benchmarks_import_the_app_only_where_they_measure_it():
    """Benchmarks measure the engine (influence) on the data sets (datasets); only the two that
    time the app's own flow and estimates import app/."""
    importing = {p.name for p in sources("benchmarks") if "app" in imports_of(p)}
    assert importing == APP_BENCHMARKS


def test_app_views_holds_the_pages_only():
    """Every module in app/views is a page of app/main.py, and no module imports one (the
    sections a page draws live in app/sections)."""
    main = (ROOT / "app" / "main.py").read_text()
    pages = sorted(p.name for p in (ROOT / "app" / "views").glob("*.py"))
    assert pages and all(f'st.Page("views/{name}"' in main for name in pages)
    for path in sources("app", "benchmarks"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "views" not in module.split("."), (path, module)
