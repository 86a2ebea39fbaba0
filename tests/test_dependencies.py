"""Every third-party package that src/aevb imports is declared in pyproject.toml, read with the
``packaging`` library: an import at module level (run by ``import aevb...``) as a dependency, one
inside a function (an optional feature, with its own message where it is missing) as a dependency or
in an extra; every dependency is imported somewhere, so the default install stays lean; and the test
extra installs every other extra, so that the suite exercises them."""
import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


class Imports(ast.NodeVisitor):
    """The top-level names of the absolute imports of a module, apart as at module level or deferred
    (inside a function)."""

    def __init__(self):
        self.module_level, self.deferred, self.depth = set(), set(), 0

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def add(self, name: str):
        (self.deferred if self.depth else self.module_level).add(name.split(".")[0])

    def visit_Import(self, node):
        for alias in node.names:
            self.add(alias.name)

    def visit_ImportFrom(self, node):
        if node.level == 0:
            self.add(node.module)


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n != "aevb"}


def imported() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """{distribution: files} of the module-level and of the deferred third-party imports of src/aevb."""
    distributions = packages_distributions()
    module_level, deferred = {}, {}
    for path in sorted((ROOT / "src" / "aevb").rglob("*.py")):
        v = Imports()
        v.visit(ast.parse(path.read_text(), str(path)))
        for names, out in ((v.module_level, module_level), (v.deferred, deferred)):
            for name in third_party(names):
                assert name in distributions, f"{path.relative_to(ROOT)} imports {name}, which nothing installed provides"
                for dist in distributions[name]:
                    out.setdefault(canonicalize_name(dist), set()).add(str(path.relative_to(ROOT)))
    return module_level, deferred


def declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def extras() -> dict[str, set[str]]:
    """Each extra's distributions, with the project's own extras that it names (aevb[a,b]) spelled out."""
    out = {}
    for name, requirements in PROJECT["optional-dependencies"].items():
        requirements = [Requirement(r) for r in requirements]
        own = [extra for r in requirements if r.name == "aevb" for extra in r.extras]
        out[name] = {canonicalize_name(r.name) for r in requirements if r.name != "aevb"}.union(
            *(declared(PROJECT["optional-dependencies"][extra]) for extra in own))
    return out


def test_every_import_is_declared_and_every_dependency_used():
    module_level, deferred = imported()
    core = declared(PROJECT["dependencies"])
    optional = set().union(*(dists for name, dists in extras().items() if name != "test"))
    missing = {d: files for d, files in module_level.items() if d not in core}
    assert not missing, f"imported at module level but not in [project] dependencies: {missing}"
    missing = {d: files for d, files in deferred.items() if d not in core | optional}
    assert not missing, f"imported but neither a dependency nor in an extra: {missing}"
    unused = core - module_level.keys() - deferred.keys()
    assert not unused, f"dependencies that src/aevb never imports (drop them, or make them an extra): {unused}"


def test_the_test_extra_installs_every_extra():
    all_extras = extras()
    for name, dists in all_extras.items():
        left_out = dists - all_extras["test"]
        assert not left_out, f"pip install -e '.[test]' leaves out the {name} extra's {left_out}"
