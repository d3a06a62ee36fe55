"""The Terraform in terraform/ against the topology manifest and the code (issue 8's contract): every file
parses (python-hcl2), the manifest's topics, subscriptions, functions, schedules, secrets, indexes, TTLs
and buckets are created with ``for_each`` over the manifest (never spelled by hand), every name the
Terraform does spell exists in the manifest, every entry point exists in functions/main.py, the
environment it sets is what the code reads, and secrets reach the functions under the names the code
looks them up by."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from shared.platform import topology

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"


def _strip(value: str) -> str:
    return value.strip('"')


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict[str, Any]]:
    files = sorted(TF.glob("*.tf"))
    assert files, "no Terraform files"
    out = {}
    for path in files:
        with path.open() as handle:
            out[path.name] = hcl2.load(handle)
    return out


def _blocks(parsed: dict[str, dict[str, Any]], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(type, name): body}`` of every ``resource`` or ``data`` block."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in parsed.values():
        for block in doc.get(kind, []):
            for rtype, named in block.items():
                for name, body in named.items():
                    found[(_strip(rtype), _strip(name))] = body
    return found


def test_every_file_parses_and_the_manifest_is_read_once(parsed: dict[str, dict[str, Any]]) -> None:
    text = "\n".join(p.read_text() for p in TF.glob("*.tf"))
    assert text.count("yamldecode(") == 1 and 'yamldecode(file("${path.module}/../topology.yaml"))' in text


@pytest.mark.parametrize(
    ("resource", "source"),
    [
        ("google_pubsub_topic.topic", "local.topics"),
        ("google_pubsub_subscription.push", "local.subscriptions"),
        ("google_cloudfunctions2_function.function", "local.functions"),
        ("google_service_account.function", "local.functions"),
        ("google_cloud_scheduler_job.tick", "local.schedules"),
        ("google_secret_manager_secret.secret", "local.secrets"),
        ("google_firestore_index.index", "local.indexes"),
        ("google_firestore_field.ttl", "local.ttls"),
        ("google_secret_manager_secret_iam_member.function_reads", "local.function_secrets"),
        ("google_pubsub_topic_iam_member.function_publishes", "local.function_publishes"),
    ],
)
def test_manifest_parts_are_created_for_each_entry(
    parsed: dict[str, dict[str, Any]], resource: str, source: str
) -> None:
    rtype, name = resource.split(".")
    body = _blocks(parsed, "resource")[(rtype, name)]
    assert body["for_each"] == "${" + source + "}"


def test_the_locals_come_from_the_manifest_sections(parsed: dict[str, dict[str, Any]]) -> None:
    text = (TF / "locals.tf").read_text()
    for local, section in [
        ("topics", "topics"),
        ("functions", "functions"),
        ("subscriptions", "subscriptions"),
        ("schedules", "schedules"),
        ("secrets", "secrets"),
        ("buckets", "buckets"),
        ("indexes", "firestore_indexes"),
        ("ttls", "firestore_ttl"),
    ]:
        assert re.search(rf"^\s*{local}\s*=[^=]*?local\.manifest\.{section}\b", text, re.M | re.S), local


def test_names_the_terraform_spells_exist_in_the_manifest() -> None:
    """Keys into the manifest's maps written by hand (``topic["job-progress"]``...) must name something the
    manifest defines, and nothing of the manifest may be created outside its for_each."""
    topo = topology.load().deployed()
    topics = {t.name for t in topo.topics}
    functions = {f.name for f in topo.functions}
    buckets = {b["name"] for b in topo.raw.get("buckets", [])}
    text = "\n".join(p.read_text() for p in TF.glob("*.tf"))
    for key in re.findall(r"google_pubsub_topic\.topic\[\"([^\"]+)\"\]", text):
        assert key in topics, key
    for key in re.findall(
        r"(?:google_service_account\.function|google_cloudfunctions2_function\.function)\[\"([^\"]+)\"\]", text
    ):
        assert key in functions, key
    for key in re.findall(r"local\.buckets\[\"([^\"]+)\"\]", text):
        assert key in buckets, key
    launchers = re.search(r"launchers\s*=\s*toset\(\[([^\]]*)\]\)", text)
    assert launchers is not None
    assert set(re.findall(r"\"([^\"]+)\"", launchers.group(1))) <= functions
    for name in topics | functions:
        # A manifest name in quotes anywhere else would be a second spelling of it.
        for match in re.finditer(rf"name\s*=\s*\"{re.escape(name)}\"", text):
            pytest.fail(f"{name} is named by hand at {match.group(0)}")


def test_every_entry_point_exists_in_the_functions_module() -> None:
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    for fn in topology.load().deployed().functions:
        assert fn.entry_point in defined, fn.entry_point


def test_the_environment_it_sets_is_what_the_code_reads() -> None:
    text = (TF / "locals.tf").read_text()
    block = text[text.index("function_env = {") :]
    block = block[: block.index("\n  }")]
    names = set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)\s*=", block, re.M))
    assert names, "no environment"
    code = "\n".join(p.read_text() for p in (ROOT / "shared").rglob("*.py"))
    unread = {n for n in names if n not in code and n != "FLEET_ENVIRONMENT"}
    assert not unread, f"set by Terraform but read nowhere: {sorted(unread)}"
    # Never the local fakes' endpoints or the local backend's directory.
    assert not names & {"FLEET_GKE_API_ENDPOINT", "FLEET_CLOUDRUN_API_ENDPOINT", "FLEET_LOCAL_JOBS_DIR"}


def test_secrets_reach_functions_under_the_names_the_code_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """functions.tf injects each secret as the environment variable ``upper(replace(name, "-", "_"))``;
    shared/platform/settings.secret reads exactly that."""
    from shared.platform import settings

    assert 'upper(replace(secret_environment_variables.value, "-", "_"))' in (TF / "functions.tf").read_text()
    for secret in topology.load().secrets:
        env = secret.name.upper().replace("-", "_")
        monkeypatch.setenv(env, "value-of-" + secret.name)
        assert settings.secret(secret.name) == "value-of-" + secret.name


def test_every_variable_has_a_description_and_an_example() -> None:
    variables = re.findall(r'variable "([^"]+)"', (TF / "variables.tf").read_text())
    example = (TF / "example.tfvars").read_text()
    for name in variables:
        if name in ("function_source_dir", "training_image_tag"):
            continue  # have defaults that rarely change
        assert re.search(rf"^{name}\s*=", example, re.M), f"{name} missing from example.tfvars"
    assert len(re.findall(r"description\s*=", (TF / "variables.tf").read_text())) == len(variables)


def test_cloud_functions_build_from_the_source_root() -> None:
    """The buildpack installs requirements.txt (the lock's exact versions: tests/unit/test_lock.py) and builds
    functions/main.py, which puts the source root on the path (shared/ is not installed)."""
    assert 'GOOGLE_FUNCTION_SOURCE = "functions/main.py"' in (TF / "functions.tf").read_text()
    excluded = re.search(r"excludes\s*=\s*\[(.*?)\]", (TF / "functions.tf").read_text(), re.S)
    assert excluded is not None
    for needed in ("shared", "functions", "sdk", "topology.yaml", "requirements.txt"):
        assert f'"{needed}"' not in excluded.group(1)


def test_terraform_itself_reads_the_manifest_as_the_code_does(tmp_path: Path) -> None:
    """The manifest-derived locals evaluated by the real Terraform (``terraform console`` needs no provider
    for them): the same topics, functions, subscriptions, schedules, secrets, indexes and TTLs as
    shared/platform/topology.py sees, and the agent topics are those carrying agents' events."""
    import json
    import shutil
    import subprocess

    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed")
    text = (TF / "locals.tf").read_text()
    (tmp_path / "terraform").mkdir()
    (tmp_path / "terraform" / "locals.tf").write_text(text[: text.index("  labels = {")] + "}\n")
    shutil.copy(ROOT / "topology.yaml", tmp_path / "topology.yaml")
    expr = (
        "jsonencode({topics = keys(local.topics), functions = keys(local.functions), subs = keys(local.subscriptions),"
        " schedules = keys(local.schedules), secrets = keys(local.secrets), indexes = length(local.indexes),"
        " ttls = keys(local.ttls), agent = keys(local.agent_topics), reads = keys(local.function_secrets),"
        " publishes = keys(local.function_publishes)})"
    )
    done = subprocess.run(
        ["terraform", "console"], input=expr, cwd=tmp_path / "terraform", capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(json.loads(done.stdout.strip().splitlines()[-1]))
    topo = topology.load().deployed()
    assert got["topics"] == sorted(t.name for t in topo.topics)
    assert got["functions"] == sorted(f.name for f in topo.functions)
    assert got["subs"] == sorted(s.name for s in topo.subscriptions)
    assert got["schedules"] == sorted(j.name for j in topo.schedules)
    assert got["secrets"] == sorted(s.name for s in topo.secrets)
    assert got["indexes"] == len(topo.raw["firestore_indexes"])
    assert got["ttls"] == sorted(t["collection_group"] for t in topo.raw["firestore_ttl"])
    assert got["agent"] == sorted(t.name for t in topo.topics if t.event_type not in (None, "command"))
    assert got["reads"] == sorted(f"{f.name}/{s}" for f in topo.functions for s in f.secrets)
    assert got["publishes"] == sorted(f"{f.name}/{t}" for f in topo.functions for t in f.publishes)


def test_command_channels_are_managed_by_few_functions_within_the_agents_channels_only(
    parsed: dict[str, dict[str, Any]],
) -> None:
    """Agent identity (README.md): the functions that create, share and delete agents' command subscriptions
    hold a custom role of exactly what shared/services/command_channels.py calls, conditioned on the
    subscriptions named as fleet_agent.identity names them; never roles/pubsub.editor or admin."""
    from fleet_agent.identity import COMMAND_SUBSCRIPTION_PREFIX

    text = "\n".join(p.read_text() for p in TF.glob("*.tf"))
    admins = re.search(r"command_channel_admins\s*=\s*toset\(\[([^\]]*)\]\)", text)
    assert admins is not None
    names = set(re.findall(r"\"([^\"]+)\"", admins.group(1)))
    assert "fleet-registrations" in names and names <= {f.name for f in topology.load().deployed().functions}
    resources = _blocks(parsed, "resource")
    role = resources[("google_project_iam_custom_role", "command_channels")]
    assert {_strip(p) for p in role["permissions"]} == {
        "pubsub.subscriptions.create",
        "pubsub.subscriptions.get",
        "pubsub.subscriptions.delete",
        "pubsub.subscriptions.getIamPolicy",
        "pubsub.subscriptions.setIamPolicy",
    }
    grant = resources[("google_project_iam_member", "command_channels")]
    assert grant["for_each"] == "${local.command_channel_admins}"
    condition = grant["condition"][0] if isinstance(grant["condition"], list) else grant["condition"]
    assert f"/subscriptions/{COMMAND_SUBSCRIPTION_PREFIX}" in condition["expression"]
    assert not re.search(r"roles/pubsub\.(editor|admin)\"", text)
