"""Sphinx configuration of the API reference (``bash scripts/run.sh docs``).

Built offline from the docstrings (autodoc + napoleon for the Google-style ``Args:`` /
``Returns:`` / ``Raises:`` sections) with warnings as errors and nitpicky cross-references:

    sphinx-build -b html -W --keep-going -n docs/api docs/_build/html

Each page documents one package with ``.. autopackage::`` (defined below): the package's
docstring, the names it re-exports (its ``__all__``) and then every public submodule with
``automodule``, found at build time, so that new modules and new names appear without editing
the pages. References to other packages (torch, Lightning, NumPy, ...) cannot be resolved
offline (no intersphinx); ``nitpick_ignore_regex`` lets them through, and only them.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.ext.autodoc import ClassDocumenter, DataDocumenter, ModuleDocumenter
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # bnnrobust and callbacks from this checkout, installed or not
os.environ.setdefault("OMP_NUM_THREADS", "1")

project = "bnnrobust"
author = "bnnrobust contributors"
copyright = "bnnrobust contributors"
release = version = importlib.import_module("bnnrobust").__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"bnnrobust {release} API reference"

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False  # torch.nn.Module.forward's docstring is not ours
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
}

nitpicky = True
# Names of other packages: no intersphinx offline, so they cannot resolve; only they pass.
_EXTERNAL = (
    r"(torch|torchvision|torchmetrics|torchattacks|timm|lightning|pytorch_lightning|numpy|np"
    r"|matplotlib|art|jsonargparse|yaml|tqdm|tensorboard|argparse|collections|contextlib"
    r"|typing|typing_extensions|pathlib|os|io|enum|dataclasses|abc|json|logging|types"
    r"|concurrent|multiprocessing|functools|datetime|random|re|sys|subprocess|threading"
    r"|L|pl|nn|Tensor)"
)
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL + r"(\..*)?"),
]
nitpick_ignore: list[tuple[str, str]] = []

def _public_submodules(package: str) -> list[str]:
    """Submodules of ``package`` to document: public names, no ``__main__``, recursively."""
    mod = importlib.import_module(package)
    found: list[str] = []
    if not hasattr(mod, "__path__"):  # a plain module (bnnrobust.zoo): nothing below it
        return found
    for info in sorted(pkgutil.iter_modules(mod.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        name = f"{package}.{info.name}"
        found.append(name)
        if info.ispkg:
            found.extend(_public_submodules(name))
    return found


_ASSIGNED: dict[str, set[str]] = {}


def _assigned_names(module: Any) -> set[str]:
    """Names a module binds itself at top level (assignments, defs, classes), not imports."""
    name = module.__name__
    if name not in _ASSIGNED:
        own: set[str] = set()
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError, SyntaxError):
            tree = ast.Module(body=[], type_ignores=[])
        for stmt in tree.body:
            targets: list[ast.expr] = []
            if isinstance(stmt, ast.Assign):
                targets = list(stmt.targets)
            elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
                targets = [stmt.target]
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(stmt.name)
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        own.add(node.id)
        _ASSIGNED[name] = own
    return _ASSIGNED[name]


_TYPE_CHECKING: dict[str, dict[str, str]] = {}


def _type_checking_imports(modname: str) -> dict[str, str]:
    """``{name: dotted path}`` of the imports under ``if TYPE_CHECKING:`` in a module.

    Annotations naming them cannot be evaluated at build time and stay plain names (``Figure``).
    """
    if modname not in _TYPE_CHECKING:
        found: dict[str, str] = {}
        module = sys.modules.get(modname)
        try:
            tree = ast.parse(inspect.getsource(module)) if module else None
        except (OSError, TypeError, SyntaxError):
            tree = None
        for stmt in tree.body if tree else []:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                for sub in ast.walk(stmt):
                    if isinstance(sub, ast.ImportFrom) and sub.module:
                        for alias in sub.names:
                            found[alias.asname or alias.name] = f"{sub.module}.{alias.name}"
                    elif isinstance(sub, ast.Import):
                        for alias in sub.names:
                            found[alias.asname or alias.name] = alias.name
        _TYPE_CHECKING[modname] = found
    return _TYPE_CHECKING[modname]


def _defining_module(package: str, name: str, obj: Any) -> str | None:
    """The module under ``package`` that assigns ``name`` to ``obj`` (for data: no __module__)."""
    for modname, module in sorted(sys.modules.items()):
        if not (modname == package or modname.startswith(package + ".")) or module is None:
            continue
        if getattr(module, name, None) is obj and name in _assigned_names(module):
            return modname
    return None


def _lookup(target: str) -> tuple[bool, Any, str | None]:
    """(found, object, documented name) for a dotted name in this project's packages.

    ``bnnrobust.attacks.PGD`` -> ``bnnrobust.attacks.pgd.PGD`` (where autodoc documents it);
    data without ``__module__`` (a dict of presets) is looked up where it is assigned.
    """
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        modname = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(modname)
        except Exception:  # noqa: BLE001 - not a module (or not importable): try shorter
            continue
        parent: Any = None
        try:
            for attr in parts[i:]:
                parent, obj = obj, getattr(obj, attr)
        except AttributeError:
            return False, None, None
        if inspect.ismodule(obj):
            return True, obj, obj.__name__
        if inspect.isclass(parent) and parts[-1] in dir(parent):
            # an attribute of a class: documented under the class that defines it
            owner = next((c for c in inspect.getmro(parent) if parts[-1] in vars(c)), parent)
            return True, obj, f"{owner.__module__}.{owner.__qualname__}.{parts[-1]}"
        real_mod = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and isinstance(real_mod, str) \
                and isinstance(qualname, str) and "<" not in qualname:
            return True, obj, f"{real_mod}.{qualname}"
        if inspect.ismodule(parent):  # data (a dict, a type alias): where it is assigned
            home = _defining_module(parts[0], parts[-1], obj)
            return True, obj, f"{home}.{parts[-1]}" if home else None
        return True, obj, None
    return False, None, None


class AutoPackage(SphinxDirective):
    """``.. autopackage:: pkg [module ...]``: a package's docstring, exports and submodules.

    Without extra arguments every public submodule of ``pkg`` (recursively) is documented;
    extra arguments restrict the page to those modules (for a top-level page that shares its
    package with others). ``:exclude:`` names modules documented on another page.
    """

    required_arguments = 1
    optional_arguments = 100
    option_spec = {"exclude": lambda arg: (arg or "").split()}
    has_content = False

    def run(self) -> list[nodes.Node]:
        package = self.arguments[0]
        mod = importlib.import_module(package)
        modules = self.arguments[1:] or _public_submodules(package)
        exclude = set(self.options.get("exclude", []))
        modules = [m for m in modules if m not in exclude and not any(
            m.startswith(e + ".") for e in exclude)]
        is_package = hasattr(mod, "__path__")
        lines = [f".. automodule:: {package}"] + (["   :no-members:"] if is_package else []) + [""]
        exports = [n for n in getattr(mod, "__all__", []) if not n.startswith("__")]
        if not is_package:
            exports = []  # a module documents its own members
        if exports:
            refs = ", ".join(f":py:obj:`~{package}.{n}`" for n in exports)
            lines += [f"``from {package} import ...``: {refs}", ""]
        for name in modules:
            lines += [name, "-" * len(name), "", f".. automodule:: {name}", ""]
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=package), container)
        return list(container.children)


def _resolve_reference(app: Sphinx, env: Any, node: addnodes.pending_xref,
                       contnode: nodes.Element) -> nodes.Element | None:
    """Resolve what the Python domain could not, for names of this project only.

    * a re-exported name (``bnnrobust.attacks.PGD``) -> where it is defined and documented;
    * a short name in a docstring (``:class:`Attack``` in ``bnnrobust.attacks.cascade``, which
      imports it) -> looked up in that module (and class), as Python would;
    * a name that exists but is private or has no page (``_perturb``, a ``TypeVar``, a class
      of another package imported under that name) -> plain text instead of a link.

    A name that does not exist in the code stays unresolved: a warning, so an error.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip(".~")
    if hasattr(builtins, target):
        return None  # int, float, None: Sphinx's own resolver lets them through
    modname = node.get("py:module") or ""
    classname = node.get("py:class") or ""
    candidates = [target] if target.startswith(("bnnrobust.", "callbacks.")) else []
    if modname:
        if classname:
            candidates.append(f"{modname}.{classname}.{target}")
        candidates.append(f"{modname}.{target}")
        head, _, rest = target.partition(".")
        hidden = _type_checking_imports(modname).get(head)
        if hidden is not None:
            full = f"{hidden}.{rest}" if rest else hidden
            if not full.startswith(("bnnrobust", "callbacks")):
                return contnode  # another package's type, imported for annotations only
            candidates.append(full)
        # a module's docstring naming what its package exports (``load_system`` in
        # bnnrobust.evaluation.cli, imported there inside a function)
        parts = modname.split(".")
        candidates += [".".join(parts[:i]) + f".{target}" for i in range(len(parts) - 1, 0, -1)]
    domain = env.get_domain("py")
    for candidate in candidates:
        found, obj, documented = _lookup(candidate)
        if not found:
            continue
        if documented and documented != target:
            for reftype in (node.get("reftype", "obj"), "obj"):
                ref = domain.resolve_xref(env, node["refdoc"], app.builder, reftype, documented,
                                          node, contnode)
                if ref is not None:
                    return ref
        # it exists but has no entry of its own (private, another package's, a TypeVar, a
        # name not in its module's __all__): plain text, and a line with -v
        logger.verbose("%s: %r exists as %s but is not documented: plain text",
                       node.get("refdoc"), target, documented or candidate)
        return contnode
    return None


def _public_bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    """``Bases:`` shows public classes: a private base is replaced by its own bases."""
    out: list[type] = []
    todo = list(bases)
    while todo:
        base = todo.pop(0)
        if base.__name__.startswith("_") and base.__module__.startswith(("bnnrobust", "callbacks")):
            todo[:0] = [b for b in base.__bases__ if b is not object]
        elif base not in out:
            out.append(base)
    bases[:] = out or [object]


_RAW_LINES: dict[str, list[str]] = {}


def _keep_raw(app: Sphinx, what: str, name: str, obj: Any, options: Any,
              lines: list[str]) -> None:
    """Before napoleon: remember the docstring of a constant, attribute or property."""
    if what in ("data", "attribute", "property"):
        _RAW_LINES[name] = list(lines)


def _restore_raw(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                 lines: list[str]) -> None:
    """After napoleon: put it back unchanged.

    Napoleon reads the first line of such a docstring as ``type: description``; this project's
    constants are described in prose (``"The paper's inner loop (Table 4): ..."``), which it
    would turn into a type named "The paper's inner loop (Table 4)".
    """
    if name in _RAW_LINES:
        lines[:] = _RAW_LINES.pop(name)


def _attributes_section(doc: str | None) -> set[str]:
    """Names listed in a Google-style ``Attributes:`` section of a class docstring."""
    names: set[str] = set()
    lines = inspect.cleandoc(doc or "").splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "Attributes:":
            continue
        indent = len(line) - len(line.lstrip())
        entry_indent = None
        for sub in lines[i + 1:]:
            if not sub.strip():
                continue
            here = len(sub) - len(sub.lstrip())
            if here <= indent:
                break
            entry_indent = here if entry_indent is None else entry_indent
            if here == entry_indent:
                names.add(sub.strip().split(":")[0].split(" ")[0])
    return names


class _ClassDocumenter(ClassDocumenter):
    """A class attribute described in the docstring's ``Attributes:`` is not listed again."""

    def get_object_members(self, want_all: bool) -> tuple[bool, list[Any]]:
        check, members = super().get_object_members(want_all)
        described = _attributes_section(getattr(self.object, "__doc__", None))
        return check, [m for m in members if m.__name__ not in described]


class _DataDocumenter(DataDocumenter):
    """A module constant without a docstring is listed too (autodoc skips those)."""

    @classmethod
    def can_document_member(cls, member: Any, membername: str, isattr: bool,
                            parent: Any) -> bool:
        return isinstance(parent, ModuleDocumenter) and not (
            inspect.isroutine(member) or inspect.isclass(member) or inspect.ismodule(member))

    def check_module(self) -> bool:
        # autodoc compares the value's __module__ (a Path's is "pathlib") with this module's
        # name; a constant assigned here belongs here whatever its type
        return self.objpath[-1] in _assigned_names(self.parent) or super().check_module()

    def get_doc(self) -> list[list[str]] | None:
        if self.get_module_comment(self.objpath[-1]):
            return super().get_doc()
        doc = getattr(self.object, "__doc__", None)
        if doc is None or doc == getattr(type(self.object), "__doc__", None):
            return []  # a dict's "dict() -> new empty dictionary" is not this constant's doc
        return super().get_doc()


class _OwnModuleDocumenter(ModuleDocumenter):
    """A module without ``__all__`` documents what it defines, not the data it imports.

    autodoc already skips imported classes and functions (by ``__module__``); a dict or
    tuple imported from another module has no ``__module__`` and would be listed again.
    """

    def get_object_members(self, want_all: bool) -> tuple[bool, list[Any]]:
        check, members = super().get_object_members(want_all)
        if want_all and self.__all__ is None:
            own = _assigned_names(self.object)
            members = [m for m in members if m.__name__ in own]
        return check, members


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("autopackage", AutoPackage)
    app.add_autodocumenter(_OwnModuleDocumenter, override=True)
    app.add_autodocumenter(_ClassDocumenter, override=True)
    app.add_autodocumenter(_DataDocumenter, override=True)
    app.connect("missing-reference", _resolve_reference)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-docstring", _keep_raw, priority=100)
    app.connect("autodoc-process-docstring", _restore_raw, priority=900)
    return {"parallel_read_safe": True}
