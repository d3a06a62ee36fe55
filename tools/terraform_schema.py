"""Offline schema check of Terraform: every resource and data block against the provider's real schema.

`terraform validate` needs the provider, which cannot be downloaded here; this reads its schema from the jsii
assembly of cdktf-cdktf-provider-google instead (tools/provider_schema.py) and checks, in every block and
nested block (``dynamic "x" { content { ... } }`` against block x's schema), that each attribute and block
name exists, that required attributes and blocks are set, and that literal values can be converted to the
attribute's type (as Terraform converts: 1 is a fine string, "yes" is no bool). Expressions are not evaluated
and pass, and nothing the provider validates itself (allowed values, conflicting arguments) is checked.

    python -m tools.terraform_schema --assembly .venv-tfschema [--cache DIR] terraform

Each finding is printed as ``file:line: address: message``; the exit status is 1 when there are any, 2 when
the schema or the files cannot be read. ``check_paths`` and ``check_text`` return the findings to a test.
Needs python-hcl2 8 (its raw parse tree carries the line numbers).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
from lark import Token, Tree
from lark.exceptions import LarkError

from tools.provider_schema import Block, Schema, SchemaError, load_schema


class _Expression:
    """A value only Terraform can compute (a reference, a call, a template): never a type error here."""

    def __repr__(self) -> str:
        return "EXPRESSION"


EXPRESSION = _Expression()


@dataclass
class Attribute:
    name: str
    value: Any  # str, int, float, bool, None, list, dict of those, or EXPRESSION
    line: int


@dataclass
class HclBlock:
    type: str
    labels: list[str]
    body: Body
    line: int


@dataclass
class Body:
    attributes: list[Attribute]
    blocks: list[HclBlock]


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    address: str  # google_storage_bucket.models.versioning, data.archive_file.source...
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.address}: {self.message}"


# Meta-arguments Terraform itself takes in a resource or data block (attributes, blocks): never the provider's.
_META = {
    "resource": ({"count", "for_each", "provider", "depends_on"}, {"lifecycle", "connection", "provisioner"}),
    "data": ({"count", "for_each", "provider", "depends_on"}, {"lifecycle"}),
}
_NO_META: tuple[set[str], set[str]] = (set(), set())
_DYNAMIC_ARGUMENTS = {"for_each", "iterator", "labels"}
_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


# --- reading HCL: python-hcl2's raw parse tree, which keeps line numbers (its dicts do not) ---


def parse(text: str) -> Body:
    """The top-level body of an HCL file."""
    tree = hcl2.parses_to_tree(text)
    return _body(next(c for c in tree.children if isinstance(c, Tree) and c.data == "body"))


def _body(node: Tree) -> Body:
    body = Body([], [])
    for child in node.children:
        if not isinstance(child, Tree):
            continue
        if child.data == "attribute":
            body.attributes.append(Attribute(_name(child.children[0]), _value(child.children[-1]), child.meta.line))
        elif child.data == "block":
            parts = [c for c in child.children if isinstance(c, Tree) and c.data != "new_line_or_comment"]
            inner = _body(parts[-1])  # the last part is the body; the first the type; labels between
            body.blocks.append(HclBlock(_name(parts[0]), [_name(p) for p in parts[1:-1]], inner, child.meta.line))
    return body


def _name(node: Tree) -> str:
    """A block type, label or attribute name: an identifier, a keyword (for_each) or a quoted string."""
    return "".join(str(token) for token in node.scan_values(lambda v: isinstance(v, Token) and v.type != "DBLQUOTE"))


def _value(node: Tree | Token) -> Any:
    """A literal as a Python value; anything Terraform must evaluate as EXPRESSION."""
    if isinstance(node, Token):
        return EXPRESSION
    children = [c for c in node.children if not (isinstance(c, Tree) and c.data == "new_line_or_comment")]
    kind = node.data
    if kind == "expr_term" and len(children) == 1:
        return _value(children[0])
    if kind == "unary_op" and str(children[0]) == "-":
        number = _value(children[1])
        return -number if isinstance(number, int | float) and not isinstance(number, bool) else EXPRESSION
    if kind in ("int_lit", "float_lit"):
        text = str(children[0])
        return int(text) if kind == "int_lit" else float(text)
    if kind == "literal_value":
        return {"true": True, "false": False, "null": None}[str(children[0])]
    if kind == "string":
        parts = [p.children[0] for p in children if isinstance(p, Tree)]
        if all(isinstance(p, Token) for p in parts):  # no ${...} and no %{...}: a literal ($${ is an escape)
            return "".join(str(p) for p in parts)
        return EXPRESSION
    if kind in ("heredoc_template", "heredoc_template_trim"):
        text = str(children[0])
        return EXPRESSION if re.search(r"(?<![$%])[$%]\{", text) else text
    if kind == "tuple":
        return [_value(c) for c in children if isinstance(c, Tree)]
    if kind == "object":
        elements = [c for c in children if isinstance(c, Tree) and c.data == "object_elem"]
        return {f"{i}:{_name(e.children[0])}": _value(e.children[-1]) for i, e in enumerate(elements)}
    return EXPRESSION


# --- checking ---


def type_problem(value: Any, type_: str) -> str | None:
    """Why a literal cannot be converted to the attribute's type, as Terraform converts; None when it can."""
    if value is EXPRESSION or value is None or type_ == "any":
        return None
    collection = re.fullmatch(r"(list|set|map)\((.+)\)", type_)
    if collection:
        kind, element = collection.groups()
        if kind == "map":
            items = list(value.values()) if isinstance(value, dict) else None
        else:
            items = value if isinstance(value, list) else None
        if items is None or any(type_problem(item, element) for item in items):
            return f"expected {type_}, got {_describe(value)}"
        return None
    if isinstance(value, list | dict):
        return f"expected {type_}, got {_describe(value)}"
    if type_ == "number":
        fits = (isinstance(value, int | float) and not isinstance(value, bool)) or (
            isinstance(value, str) and _NUMBER.fullmatch(value) is not None
        )
    elif type_ == "bool":
        fits = isinstance(value, bool) or value in ("true", "false")
    else:
        fits = True  # strings: numbers and bools convert
    return None if fits else f"expected {type_}, got {_describe(value)}"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"bool {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f'string "{value[:40]}"'
    return "a list" if isinstance(value, list) else "an object"


def _hint(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _Checker:
    def __init__(self, file: str, schema: Schema) -> None:
        self.file = file
        self.schema = schema
        self.findings: list[Finding] = []

    def add(self, line: int, address: str, message: str) -> None:
        self.findings.append(Finding(self.file, line, address, message))

    def top(self, block: HclBlock) -> None:
        """A resource or data block: its type's schema, then its body with the meta-arguments allowed."""
        kind = block.type
        if len(block.labels) != 2:
            self.add(block.line, kind, f"a {kind} block takes two labels, type and name")
            return
        type_name, name = block.labels
        address = f"{type_name}.{name}" if kind == "resource" else f"data.{type_name}.{name}"
        schema = self.schema.get(kind, {}).get(type_name)
        if schema is not None:
            self.body(block.body, schema, address, block.line, _META[kind])
            return
        provider = str(self.schema.get("provider", "hashicorp/google"))
        if type_name.split("_")[0] == provider.split("/")[-1]:
            version = self.schema.get("provider_version", "?")
            hint = _hint(type_name, self.schema.get(kind, {}))
            self.add(block.line, address, f'unknown {kind} type "{type_name}" in {provider} {version}{hint}')
        else:
            self.add(block.line, address, f'no schema for "{type_name}": list it in EXTRA (tools/provider_schema.py)')

    def body(self, body: Body, schema: Block, address: str, line: int, meta: tuple[set[str], set[str]]) -> None:
        attributes: dict[str, str] = schema.get("attributes", {})
        blocks: dict[str, Block] = schema.get("blocks", {})
        names = [*attributes, *blocks]
        present: set[str] = set()
        for attribute in body.attributes:
            if attribute.name in meta[0]:
                continue
            if attribute.name in attributes:
                problem = type_problem(attribute.value, attributes[attribute.name])
                if problem:
                    self.add(attribute.line, address, f"{attribute.name}: {problem}")
            elif attribute.name in blocks:
                # Attribute syntax for a block: refused for most, allowed for a few (ConfigModeAttr); a
                # primitive literal is wrong either way.
                if isinstance(attribute.value, str | int | float | bool):
                    self.add(attribute.line, address, f'"{attribute.name}" is a block, not an attribute')
            else:
                self.add(attribute.line, address, f'unknown attribute "{attribute.name}"{_hint(attribute.name, names)}')
                continue
            if attribute.value is not None:  # null is as good as unset
                present.add(attribute.name)
        counts = Counter(b.type for b in body.blocks)
        seen: Counter[str] = Counter()
        for block in body.blocks:
            if block.type in meta[1]:
                continue
            if block.type == "dynamic":
                present.add(self.dynamic(block, blocks, attributes, address))
                continue
            if block.type not in blocks:
                if block.type in attributes:
                    message = f'"{block.type}" is an attribute, not a block: write {block.type} = ...'
                else:
                    message = f'unknown block "{block.type}"{_hint(block.type, names)}'
                self.add(block.line, address, message)
                continue
            present.add(block.type)
            index = f"[{seen[block.type]}]" if counts[block.type] > 1 else ""
            seen[block.type] += 1
            if block.labels:
                self.add(block.line, address, f'block "{block.type}" takes no labels')
            if index == "[1]" and blocks[block.type].get("max_items") == 1:
                self.add(block.line, address, f'at most one "{block.type}" block is allowed')
            self.body(block.body, blocks[block.type], f"{address}.{block.type}{index}", block.line, _NO_META)
        for name in schema.get("required", []):
            if name not in present:
                what = "block" if name in blocks else "attribute"
                self.add(line, address, f'missing required {what} "{name}"')

    def dynamic(self, block: HclBlock, blocks: dict[str, Block], attributes: dict[str, str], address: str) -> str:
        """``dynamic "x" { for_each, iterator, labels, content { ... } }``: content checked as block x. Returns x."""
        name = block.labels[0] if len(block.labels) == 1 else ""
        where = f"{address}.dynamic.{name}"
        if name not in blocks:
            if len(block.labels) != 1:
                message = "a dynamic block takes one label, the type of the blocks it makes"
            elif name in attributes:
                message = f'"{name}" is an attribute: a dynamic block makes blocks'
            else:
                message = f'unknown block "{name}"{_hint(name, blocks)}'
            self.add(block.line, where, message)
            return name
        arguments = {a.name for a in block.body.attributes}
        for argument in block.body.attributes:
            if argument.name not in _DYNAMIC_ARGUMENTS:
                message = f'unknown argument "{argument.name}" of a dynamic block (for_each, iterator, labels)'
                self.add(argument.line, where, message)
        if "for_each" not in arguments:
            self.add(block.line, where, 'missing required argument "for_each"')
        contents = [b for b in block.body.blocks if b.type == "content"]
        for other in block.body.blocks:
            if other.type != "content":
                self.add(other.line, where, f'unknown block "{other.type}" in a dynamic block (only content)')
        if len(contents) != 1:
            self.add(block.line, where, 'a dynamic block needs exactly one "content" block')
        for content in contents:
            self.body(content.body, blocks[name], f"{where}.content", content.line, _NO_META)
        return name


def check_text(text: str, schema: Schema, file: str = "<text>") -> list[Finding]:
    """The findings of one file's text."""
    checker = _Checker(file, schema)
    try:
        body = parse(text)
    except LarkError as exc:
        return [Finding(file, int(getattr(exc, "line", 0) or 0), "-", f"cannot parse: {str(exc).splitlines()[0]}")]
    for block in body.blocks:
        if block.type in ("resource", "data"):
            checker.top(block)
    return sorted(checker.findings, key=lambda f: f.line)  # stable: a block's findings stay in their order


def tf_files(paths: Sequence[Path]) -> list[Path]:
    """The *.tf files of each directory (a Terraform module is one directory: not recursive), or the file."""
    return [f for p in paths for f in (sorted(p.glob("*.tf")) if p.is_dir() else [p])]


def check_paths(paths: Sequence[Path], schema: Schema) -> list[Finding]:
    """The findings of every *.tf file of the given directories (or files)."""
    return [finding for f in tf_files(paths) for finding in check_text(f.read_text(), schema, str(f))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.terraform_schema", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--assembly",
        type=Path,
        required=True,
        help="the provider-google@*.jsii.tgz, a cdktf-cdktf-provider-google wheel, or a virtualenv, "
        "site-packages or folder of wheels holding one",
    )
    parser.add_argument("--cache", type=Path, help="where to keep the extracted schema (default: beside the assembly)")
    parser.add_argument("dirs", type=Path, nargs="+", help="Terraform directories (their *.tf files) or files")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    files = tf_files(args.dirs)
    missing = [str(p) for p in args.dirs if not p.exists()]
    if missing or not files:
        print(f"error: no .tf files in {', '.join(missing or map(str, args.dirs))}", file=sys.stderr)
        return 2
    try:
        schema = load_schema(args.assembly, args.cache)
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    findings = check_paths(files, schema)
    for finding in findings:
        print(finding)
    print(
        f"{len(findings)} finding(s) in {len(files)} files against {schema.get('provider')} "
        f"{schema.get('provider_version')} ({schema.get('assembly')}), {time.perf_counter() - started:.2f} s",
        file=sys.stderr,
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
