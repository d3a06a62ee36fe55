"""The offline Terraform schema check (tools/terraform_schema.py, tools/provider_schema.py).

Its logic against a tiny schema in the compact format, built by hand after the real one (hashicorp/google
6.50.0 as extracted from cdktf-cdktf-provider-google 16.12.1), and the extraction against a few types copied
from the real assembly (tests/fixtures/terraform/assembly.jsii.json): neither needs the 50 MB wheel. One
test runs on the real assembly when FLEET_TF_ASSEMBLY names it (make test sets it to the tool virtualenv
holding the wheel): terraform/ has no findings and the fixtures exactly their seeded ones.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tools.provider_schema import SchemaError, find_assembly, load_schema, snake_case
from tools.terraform_schema import Finding, check_paths, check_text, main, type_problem

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "terraform"
TYPO = 'unknown attribute "uniform_bucket_level_acess" (did you mean "uniform_bucket_level_access"?)'

SCHEMA: dict[str, Any] = {
    "format": 1,
    "provider": "hashicorp/google",
    "provider_version": "6.50.0",
    "resource": {
        "google_storage_bucket": {
            "attributes": {
                "name": "string",
                "location": "string",
                "force_destroy": "bool",
                "labels": "map(string)",
                "public_access_prevention": "string",
                "uniform_bucket_level_access": "bool",
            },
            "blocks": {
                "versioning": {"attributes": {"enabled": "bool"}, "required": ["enabled"], "max_items": 1},
                "cors": {"attributes": {"origin": "list(string)", "max_age_seconds": "number"}},
                "lifecycle_rule": {
                    "blocks": {
                        "action": {"attributes": {"type": "string"}, "required": ["type"], "max_items": 1},
                        "condition": {"attributes": {"age": "number"}, "max_items": 1},
                    },
                    "required": ["action", "condition"],
                },
            },
            "required": ["location", "name"],
        },
        "google_storage_bucket_iam_member": {
            "attributes": {"bucket": "string", "member": "string", "role": "string"},
            "required": ["bucket", "member", "role"],
        },
    },
    "data": {"google_project": {"attributes": {"project_id": "string"}}},
}

GOOD = """
resource "google_storage_bucket" "b" {
  name                        = "${var.project}-b"
  location                    = var.region
  uniform_bucket_level_access = true
  force_destroy               = "false"
  labels                      = { app = "fleet", tier = 1 }

  versioning {
    enabled = var.versioned
  }
  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }
  dynamic "cors" {
    for_each = var.origins
    iterator = o
    content {
      origin          = [o.value, "https://example.com"]
      max_age_seconds = -1
    }
  }
}
"""


def findings(text: str) -> list[tuple[str, str]]:
    return [(f.address, f.message) for f in check_text(text, SCHEMA, "main.tf")]


def bucket(body: str) -> str:
    return f'resource "google_storage_bucket" "b" {{\n  name = "n"\n  location = "EU"\n{body}\n}}\n'


def test_a_correct_configuration_has_no_findings() -> None:
    assert findings(GOOD) == []


def test_meta_arguments_are_allowed_in_resources_and_data_sources() -> None:
    text = bucket(
        "  count = 1\n  provider = google.eu\n  depends_on = [x.y]\n  lifecycle {\n    prevent_destroy = true\n  }\n"
        '  connection {\n    host = "h"\n  }\n  provisioner "local-exec" {\n    command = "true"\n  }'
    )
    data = 'data "google_project" "p" {\n  for_each = toset(["a"])\n  lifecycle {\n    postcondition {}\n  }\n}\n'
    assert findings(text + data) == []


def test_meta_arguments_are_not_allowed_in_nested_blocks() -> None:
    assert findings(bucket("  versioning {\n    enabled = true\n    count = 1\n  }")) == [
        ("google_storage_bucket.b.versioning", 'unknown attribute "count"')
    ]


def test_unknown_attribute_with_a_hint_and_its_line() -> None:
    found = check_text(bucket("  uniform_bucket_level_acess = true"), SCHEMA, "main.tf")
    assert found == [Finding("main.tf", 4, "google_storage_bucket.b", TYPO)]
    assert str(found[0]) == f"main.tf:4: google_storage_bucket.b: {TYPO}"


def test_unknown_block() -> None:
    assert findings(bucket("  website {}")) == [("google_storage_bucket.b", 'unknown block "website"')]


def test_unknown_attribute_inside_a_nested_block() -> None:
    text = bucket(
        '  lifecycle_rule {\n    condition {\n      agee = 1\n    }\n    action {\n      type = "Delete"\n    }\n  }'
    )
    assert findings(text) == [
        ("google_storage_bucket.b.lifecycle_rule.condition", 'unknown attribute "agee" (did you mean "age"?)')
    ]


def test_unknown_attribute_inside_a_dynamic_blocks_content() -> None:
    text = bucket('  dynamic "cors" {\n    for_each = var.o\n    content {\n      origins = [cors.value]\n    }\n  }')
    assert findings(text) == [
        ("google_storage_bucket.b.dynamic.cors.content", 'unknown attribute "origins" (did you mean "origin"?)')
    ]


def test_a_dynamic_block_names_a_known_block_and_takes_only_its_arguments() -> None:
    assert findings(bucket('  dynamic "corz" {\n    for_each = []\n    content {}\n  }')) == [
        ("google_storage_bucket.b.dynamic.corz", 'unknown block "corz" (did you mean "cors"?)')
    ]
    assert findings(bucket('  dynamic "cors" {\n    for_eech = []\n    content {}\n  }')) == [
        ("google_storage_bucket.b.dynamic.cors", 'missing required argument "for_each"'),
        (
            "google_storage_bucket.b.dynamic.cors",
            'unknown argument "for_eech" of a dynamic block (for_each, iterator, labels)',
        ),
    ]


def test_missing_required_attributes_and_blocks() -> None:
    text = 'resource "google_storage_bucket" "b" {\n  name = null\n  lifecycle_rule {\n    action {}\n  }\n}\n'
    assert findings(text) == [
        ("google_storage_bucket.b", 'missing required attribute "location"'),
        ("google_storage_bucket.b", 'missing required attribute "name"'),
        ("google_storage_bucket.b.lifecycle_rule", 'missing required block "condition"'),
        ("google_storage_bucket.b.lifecycle_rule.action", 'missing required attribute "type"'),
    ]


def test_a_dynamic_block_counts_as_the_required_block() -> None:
    text = bucket(
        '  lifecycle_rule {\n    action {\n      type = "Delete"\n    }\n    dynamic "condition" {\n'
        "      for_each = [1]\n      content {\n        age = condition.value\n      }\n    }\n  }"
    )
    assert findings(text) == []


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("uniform_bucket_level_access", '"yes"', 'expected bool, got string "yes"'),
        ("uniform_bucket_level_access", "1", "expected bool, got number 1"),
        ("force_destroy", "[true]", "expected bool, got a list"),
        ("labels", '["a"]', "expected map(string), got a list"),
        ("labels", "{ a = [1] }", "expected map(string), got an object"),
        ("public_access_prevention", "{ a = 1 }", "expected string, got an object"),
    ],
)
def test_wrong_literal_types(attribute: str, value: str, message: str) -> None:
    assert findings(bucket(f"  {attribute} = {value}")) == [("google_storage_bucket.b", f"{attribute}: {message}")]


def test_wrong_literal_types_in_nested_and_dynamic_blocks() -> None:
    text = bucket(
        '  dynamic "cors" {\n    for_each = []\n    content {\n'
        '      origin = "*"\n      max_age_seconds = "an hour"\n    }\n  }'
    )
    assert findings(text) == [
        ("google_storage_bucket.b.dynamic.cors.content", 'origin: expected list(string), got string "*"'),
        ("google_storage_bucket.b.dynamic.cors.content", 'max_age_seconds: expected number, got string "an hour"'),
    ]


@pytest.mark.parametrize(
    ("value", "type_"),
    [
        (1, "string"),
        (True, "string"),
        ("5", "number"),
        ("-1.5e3", "number"),
        ("true", "bool"),
        (["1", 2], "list(number)"),
    ],
)
def test_literals_terraform_converts_pass(value: Any, type_: str) -> None:
    assert type_problem(value, type_) is None


def test_expressions_and_templates_are_not_literals() -> None:
    text = bucket(
        '  force_destroy = var.x\n  uniform_bucket_level_access = "${var.x}"\n  labels = merge(local.a, {})\n'
        '  public_access_prevention = "%{ if var.x }enforced%{ endif }"\n'
        "  versioning {\n    enabled = var.a ? true : 1\n  }"
    )
    assert findings(text) == []


def test_attributes_and_blocks_are_not_interchangeable() -> None:
    assert findings(bucket("  labels {}\n  versioning = true")) == [
        ("google_storage_bucket.b", '"labels" is an attribute, not a block: write labels = ...'),
        ("google_storage_bucket.b", '"versioning" is a block, not an attribute'),
    ]


def test_at_most_one_of_a_single_block() -> None:
    text = bucket("  versioning {\n    enabled = true\n  }\n  versioning {\n    enabled = false\n  }")
    assert findings(text) == [("google_storage_bucket.b", 'at most one "versioning" block is allowed')]


def test_unknown_types_and_other_providers() -> None:
    text = 'resource "google_storage_buckets" "x" {}\nresource "random_id" "y" {}\nvariable "z" {}\n'
    assert findings(text) == [
        (
            "google_storage_buckets.x",
            'unknown resource type "google_storage_buckets" in hashicorp/google 6.50.0 '
            '(did you mean "google_storage_bucket"?)',
        ),
        ("random_id.y", 'no schema for "random_id": list it in EXTRA (tools/provider_schema.py)'),
    ]


def test_a_file_that_does_not_parse_is_a_finding() -> None:
    [finding] = check_text('resource "google_storage_bucket" "b" {\n  name = \n}\n', SCHEMA, "bad.tf")
    assert finding.address == "-" and finding.message.startswith("cannot parse")


def test_the_typo_fixture_against_the_hand_built_schema() -> None:
    found = check_paths([FIXTURES / "typo"], SCHEMA)
    assert [(Path(f.file).name, f.address, f.message) for f in found] == [
        ("main.tf", "google_storage_bucket.fixture", TYPO)
    ]


# --- the extraction, on a few types copied from the real assembly ---


def write_venv(root: Path) -> Path:
    """A virtualenv's layout holding an assembly of the real one's types (tests/fixtures/terraform/
    assembly.jsii.json), where `pip install cdktf-cdktf-provider-google` puts it."""
    jsii_dir = root / "lib" / "python3.11" / "site-packages" / "cdktf_cdktf_provider_google" / "_jsii"
    jsii_dir.mkdir(parents=True)
    data = (FIXTURES / "assembly.jsii.json").read_bytes()
    with tarfile.open(jsii_dir / "provider-google@16.12.1.jsii.tgz", "w:gz") as archive:
        member = tarfile.TarInfo("package/.jsii")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return jsii_dir / "provider-google@16.12.1.jsii.tgz"


def test_extraction_names_types_requirements_and_blocks(tmp_path: Path) -> None:
    write_venv(tmp_path)
    schema = load_schema(tmp_path)
    assert (schema["provider"], schema["provider_version"], schema["assembly"]) == (
        "hashicorp/google",
        "6.50.0",
        "@cdktf/provider-google@16.12.1",
    )
    assert schema["resource"]["google_storage_bucket"] == {
        "attributes": {
            "id": "string",
            "labels": "map(string)",
            "location": "string",
            "name": "string",
            "uniform_bucket_level_access": "bool",
        },
        "blocks": {
            "cors": {
                "attributes": {
                    "max_age_seconds": "number",
                    "method": "list(string)",
                    "origin": "list(string)",
                    "response_header": "list(string)",
                }
            },
            "versioning": {"attributes": {"enabled": "bool"}, "required": ["enabled"], "max_items": 1},
        },
        "required": ["location", "name"],
    }
    # The docs' names, where converting the camelCase would miss: detectMd5Hash, cdktf's buildAttribute.
    assert "detect_md5hash" in schema["resource"]["google_storage_bucket_object"]["attributes"]
    assert schema["resource"]["google_cloudbuild_trigger"]["blocks"]["build"]["max_items"] == 1
    assert schema["data"]["google_project"] == {"attributes": {"id": "string", "project_id": "string"}}
    assert "archive_file" in schema["data"]  # listed by hand: not the google provider's
    assert set(schema["resource"]) == {
        "google_storage_bucket",
        "google_storage_bucket_object",
        "google_cloudbuild_trigger",
    }


def test_the_schema_is_cached_by_the_assemblys_sha256(tmp_path: Path) -> None:
    write_venv(tmp_path / "venv")
    load_schema(tmp_path / "venv", tmp_path / "cache")
    [cache] = (tmp_path / "cache").iterdir()
    assert re.fullmatch(r"terraform-schema-v1-[0-9a-f]{12}-[0-9a-f]{64}\.json", cache.name)  # code, assembly
    cached = json.loads(cache.read_text())
    cached["resource"]["google_from_the_cache"] = {}
    cache.write_text(json.dumps(cached))
    assert "google_from_the_cache" in load_schema(tmp_path / "venv", tmp_path / "cache")["resource"]


def test_the_assembly_is_found_in_a_virtualenv_site_packages_or_given_itself(tmp_path: Path) -> None:
    tgz = write_venv(tmp_path)
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    for given in (tmp_path, site, site / "cdktf_cdktf_provider_google", tgz.parent, tgz):
        assert find_assembly(given) == tgz.resolve()
    with pytest.raises(SchemaError, match="no cdktf_cdktf_provider_google"):
        find_assembly(tmp_path / "lib")


@pytest.mark.parametrize(
    ("camel", "snake"),
    [
        ("ipv4CidrBlock", "ipv4_cidr_block"),
        ("masterIpv4CidrBlock", "master_ipv4_cidr_block"),
        ("outputSha256", "output_sha256"),
        ("id", "id"),
        ("enableTpu", "enable_tpu"),
    ],
)
def test_snake_case_matches_the_providers_names(camel: str, snake: str) -> None:
    assert snake_case(camel) == snake


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_venv(tmp_path / "venv")
    (tmp_path / "tf").mkdir()
    main_tf = tmp_path / "tf" / "main.tf"
    main_tf.write_text('resource "google_storage_bucket" "b" {\n  name = "n"\n  location = "EU"\n}\n')
    assert main(["--assembly", str(tmp_path / "venv"), str(tmp_path / "tf")]) == 0
    main_tf.write_text('resource "google_storage_bucket" "b" {\n  name = "n"\n}\n')
    assert main(["--assembly", str(tmp_path / "venv"), str(tmp_path / "tf")]) == 1
    assert capsys.readouterr().out == f'{main_tf}:1: google_storage_bucket.b: missing required attribute "location"\n'
    assert main(["--assembly", str(tmp_path / "nowhere"), str(tmp_path / "tf")]) == 2


# --- the real schema ---

ASSEMBLY = os.environ.get("FLEET_TF_ASSEMBLY", "")


@pytest.mark.skipif(
    not ASSEMBLY,
    reason="FLEET_TF_ASSEMBLY is unset: it names the cdktf-cdktf-provider-google install (a virtualenv, or its "
    ".jsii.tgz) whose schema the check reads; make test sets it to .venv-tfschema",
)
def test_terraform_against_the_real_schema() -> None:
    path = Path(ASSEMBLY)
    schema = load_schema(path if path.is_absolute() or path.exists() else ROOT / path)
    # versions.tf pins the provider to the schema checked.
    pin = re.search(
        r'source\s*=\s*"hashicorp/google".*?version\s*=\s*"~> (\d+\.\d+)"',
        (ROOT / "terraform" / "versions.tf").read_text(),
        re.S,
    )
    assert pin is not None and schema["provider_version"].startswith(pin.group(1) + ".")
    assert [str(f) for f in check_paths([ROOT / "terraform"], schema)] == []
    typo = check_paths([FIXTURES / "typo"], schema)
    assert [(f.line, f.address, f.message) for f in typo] == [(11, "google_storage_bucket.fixture", TYPO)]
    invalid = check_paths([FIXTURES / "invalid"], schema)
    assert [(f.line, f.address, f.message) for f in invalid] == [
        (9, "google_pubsub_subscription.fixture", 'missing required attribute "topic"'),
        (11, "google_pubsub_subscription.fixture", 'ack_deadline_seconds: expected number, got string "sixty"'),
    ]
