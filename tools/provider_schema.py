"""The Terraform provider schema the offline check (tools/terraform_schema.py) reads, without Terraform.

`terraform init` cannot download the Google provider here, but PyPI's cdktf-cdktf-provider-google is generated
from it: its jsii assembly (``cdktf_cdktf_provider_google/_jsii/provider-google@<v>.jsii.tgz``, a tgz holding
``package/.jsii``, ~100 MB of JSON) has a config interface per resource and data source, with every settable
property (camelCase), whether it is optional, and its type: a primitive, a collection, or a nested block's
struct. This module extracts, once per assembly, a compact schema of only what the check needs and caches it
as JSON keyed by the assembly's sha256, so later runs read a few MB instead.

The compact format (also what the unit tests build by hand)::

    {"format": 1, "provider": "hashicorp/google", "provider_version": "6.50.0", "assembly": "...",
     "resource": {"google_storage_bucket": BLOCK, ...}, "data": {"google_project": BLOCK, ...}}
    BLOCK = {"attributes": {"name": TYPE, ...}, "blocks": {"versioning": BLOCK, ...},
             "required": ["name", ...], "max_items": 1}     # every key optional; max_items only when 1
    TYPE = "string" | "number" | "bool" | "any" | "list(T)" | "map(T)"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any

FORMAT = 1  # bump when the extraction changes: old caches are then ignored
PACKAGE_DIR = "cdktf_cdktf_provider_google"
ASSEMBLY_NAME = "@cdktf/provider-google"

Schema = dict[str, Any]
Block = dict[str, Any]


class SchemaError(Exception):
    """The assembly cannot be found or read."""


# Types of other providers than Google, which the google assembly does not describe: listed by hand, the
# settable attributes only (computed ones such as output_sha256 may not be set). archive_file as in
# hashicorp/archive 2.7's source (internal/provider/data_source_archive_file.go); terraform/ uses type,
# source_dir, output_path and excludes, which every 2.x that versions.tf allows has.
EXTRA: dict[str, dict[str, Block]] = {
    "resource": {},
    "data": {
        "archive_file": {
            "attributes": {
                "type": "string",
                "output_path": "string",
                "source_content": "string",
                "source_content_filename": "string",
                "source_file": "string",
                "source_dir": "string",
                "excludes": "list(string)",
                "follow_symlinks": "bool",
                "output_file_mode": "string",
            },
            "blocks": {
                "source": {
                    "attributes": {"content": "string", "filename": "string"},
                    "required": ["content", "filename"],
                }
            },
            "required": ["type", "output_path"],
        }
    },
}

# A class's docs link its registry page, the link's text is the Terraform type name: "{@link
# https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/storage_bucket google_storage_bucket}".
_TYPE_LINK = re.compile(
    r"\{@link https://registry\.terraform\.io/providers/([\w-]+/[\w-]+)/([\w.]+)/docs/"
    r"(resources|data-sources)/\S+ (\w+)\}"
)
# A property's docs link the anchor of its real (snake_case) name: "...docs/resources/storage_bucket#location ...".
_NAME_ANCHOR = re.compile(r"\{@link https://registry\.terraform\.io/providers/\S+#(\w+) ")


def snake_case(name: str) -> str:
    """camelCase to snake_case, digits kept with what precedes them (ipv4CidrBlock -> ipv4_cidr_block).

    Only a fallback: the provider's own names are ambiguous around digits (detect_md5hash, hugepage_size_1g,
    enable_k8s_beta_apis) and cdktf renames some (build -> buildAttribute, geth_details -> fetchhDetails), so
    the real name is taken from the property's docs anchor when it has one, as nearly all do.
    """
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def find_assembly(path: Path) -> Path:
    """The assembly given as a .jsii.tgz, a wheel, or a folder holding one: a virtualenv, site-packages, the
    package or its _jsii folder, or a folder of downloaded wheels."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise SchemaError(f"{path}: no such file or directory")
    patterns = [
        "provider-google@*.jsii.tgz",
        "_jsii/provider-google@*.jsii.tgz",
        f"{PACKAGE_DIR}/_jsii/*.jsii.tgz",
        f"lib/python*/site-packages/{PACKAGE_DIR}/_jsii/*.jsii.tgz",
        f"lib64/python*/site-packages/{PACKAGE_DIR}/_jsii/*.jsii.tgz",
        f"Lib/site-packages/{PACKAGE_DIR}/_jsii/*.jsii.tgz",
        "cdktf_cdktf_provider_google-*.whl",
    ]
    for pattern in patterns:
        found = sorted({p.resolve() for p in path.glob(pattern)})  # lib64 is often a link to lib
        if len(found) == 1:
            return found[0]
        if found:
            raise SchemaError(f"{path}: more than one assembly: {', '.join(map(str, found))}")
    raise SchemaError(f"{path}: no {PACKAGE_DIR}/_jsii/*.jsii.tgz (is cdktf-cdktf-provider-google installed there?)")


def load_schema(assembly: Path, cache_dir: Path | None = None) -> Schema:
    """The compact schema of the assembly at (or under) ``assembly``, from the cache when it has it, with the
    hand-listed types of other providers (EXTRA) added. The cache lives next to the assembly by default."""
    path = find_assembly(assembly)
    digest = _sha256(path)
    # Keyed by this module's own source too: a change to the extraction never reads an older cache.
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    cache = (cache_dir or path.parent) / f"terraform-schema-v{FORMAT}-{code}-{digest}.json"
    schema: Schema | None = None
    try:
        with cache.open() as handle:
            schema = json.load(handle)
    except (OSError, ValueError):
        pass
    if not schema or schema.get("sha256") != digest:
        schema = extract(_read_jsii(path))
        schema["sha256"] = digest
        _write_atomically(cache, schema)
    for kind, types in EXTRA.items():
        schema[kind] = {**types, **schema[kind]}
    return schema


def extract(jsii: dict[str, Any]) -> Schema:
    """The compact schema of every resource and data source of a parsed .jsii assembly."""
    if jsii.get("name") != ASSEMBLY_NAME:
        raise SchemaError(f"not the Google provider's assembly: {jsii.get('name')}")
    types: dict[str, Any] = jsii["types"]
    schema: Schema = {
        "format": FORMAT,
        "assembly": f"{jsii['name']}@{jsii['version']}",
        "resource": {},
        "data": {},
    }
    for jtype in types.values():
        if jtype["kind"] != "class" or not any(p["name"] == "tfResourceType" for p in jtype.get("properties", [])):
            continue
        link = _TYPE_LINK.search(jtype.get("docs", {}).get("summary", ""))
        config = [p for p in (jtype.get("initializer") or {}).get("parameters", []) if p["name"] == "config"]
        if link is None or not config:
            continue  # the provider's own class, which links its index page
        schema["provider"], schema["provider_version"] = link.group(1), link.group(2)
        kind = "resource" if link.group(3) == "resources" else "data"
        schema[kind][link.group(4)] = _block(types, config[0]["type"]["fqn"], set())
    if not schema["resource"]:
        raise SchemaError("no resources found in the assembly")
    return schema


def _block(types: dict[str, Any], fqn: str, seen: set[str]) -> Block:
    if fqn in seen:  # never in a Terraform schema; guards the recursion all the same
        return {}
    attributes: dict[str, str] = {}
    blocks: dict[str, Block] = {}
    required: list[str] = []
    for prop in types[fqn].get("properties", []):
        docs = prop.get("docs", {})
        anchor = _NAME_ANCHOR.search(docs.get("summary", "") + " " + docs.get("remarks", ""))
        name = anchor.group(1) if anchor else snake_case(prop["name"])
        nested, single = _struct(types, prop["type"])
        if nested is None:
            attributes[name] = _type(prop["type"])
        else:
            blocks[name] = _block(types, nested, seen | {fqn})
            if single:
                blocks[name]["max_items"] = 1
        if not prop.get("optional"):
            required.append(name)
    block: Block = {}
    for key, value in (("attributes", attributes), ("blocks", blocks), ("required", sorted(required))):
        if value:
            block[key] = value
    return block


def _without_resolvable(jtype: dict[str, Any]) -> dict[str, Any]:
    """cdktf lets every value be a token too (``boolean | IResolvable``): the union's other member."""
    if "union" in jtype:
        members = [t for t in jtype["union"]["types"] if t.get("fqn") != "cdktf.IResolvable"]
        if len(members) == 1:
            return members[0]
    return jtype


def _struct(types: dict[str, Any], jtype: dict[str, Any]) -> tuple[str | None, bool]:
    """(the nested block's struct, whether at most one) when the property is a block, else (None, False)."""
    jtype = _without_resolvable(jtype)
    single = True
    if jtype.get("collection", {}).get("kind") == "array":
        jtype, single = jtype["collection"]["elementtype"], False
    fqn = jtype.get("fqn")
    if isinstance(fqn, str) and types.get(fqn, {}).get("datatype"):
        return fqn, single
    return None, False


def _type(jtype: dict[str, Any]) -> str:
    jtype = _without_resolvable(jtype)
    primitive = {"string": "string", "number": "number", "boolean": "bool"}
    if "primitive" in jtype:
        return primitive.get(jtype["primitive"], "any")
    collection = jtype.get("collection")
    if collection:
        element = _type(collection["elementtype"])
        return f"{'list' if collection['kind'] == 'array' else 'map'}({element})"
    return "any"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_jsii(path: Path) -> dict[str, Any]:
    """``package/.jsii`` of the tgz, or of the tgz inside a wheel."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            names = [n for n in wheel.namelist() if n.startswith(f"{PACKAGE_DIR}/_jsii/") and n.endswith(".jsii.tgz")]
            if len(names) != 1:
                raise SchemaError(f"{path}: expected one {PACKAGE_DIR}/_jsii/*.jsii.tgz, found {names}")
            with wheel.open(names[0]) as tgz:
                return _read_tgz(tgz, path)
    with path.open("rb") as tgz:
        return _read_tgz(tgz, path)


def _read_tgz(tgz: IO[bytes], path: Path) -> dict[str, Any]:
    # Streamed ("r|gz"): .jsii comes first, so the rest of the 30 MB archive is never decompressed.
    try:
        with tarfile.open(fileobj=tgz, mode="r|gz") as archive:
            for member in archive:
                if member.name == "package/.jsii":
                    handle = archive.extractfile(member)
                    if handle is None:
                        break
                    loaded: dict[str, Any] = json.load(handle)
                    return loaded
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise SchemaError(f"{path}: cannot read the assembly: {exc}") from exc
    raise SchemaError(f"{path}: no package/.jsii in the archive")


def _write_atomically(path: Path, schema: Schema) -> None:
    """Written whole or not at all: two checks extracting at once (make test runs two) never read half a file."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            temporary = Path(handle.name)
            json.dump(schema, handle, separators=(",", ":"), sort_keys=True)
        temporary.chmod(0o644)  # readable like the assembly beside it, not the temporary file's 0600
        os.replace(temporary, path)
    except OSError as exc:
        print(f"warning: schema not cached ({exc}); pass --cache DIR to keep it", file=sys.stderr)
        if temporary is not None:
            temporary.unlink(missing_ok=True)
