"""The deployment artefacts of deploy/, checked without running them.

No image is built and no container or cluster runs here. What can be known from the files is
checked against the code they drive: every file parses; every `SEGUE_*` variable is a setting
and every value given to one is valid; every `segue ...` invocation parses in the real click
command tree; ports, probe paths and scrape targets agree with each other and with the routes;
every metric the alerts and the dashboard read is one gateway/metrics.py defines; the Dockerfile,
compose file and Kubernetes objects have the shape deploy/README.md promises. `promtool` checks
the Prometheus files (test_promtool.py).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from gateway.cli.main import main
from gateway.http.routes import ENDPOINTS
from gateway.settings import NOT_SETTINGS, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

Doc = dict[str, Any]


def load_yaml(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one_yaml(path: Path) -> Any:
    (doc,) = load_yaml(path)
    return doc


YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
JSON_FILES = sorted(DEPLOY.rglob("*.json"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_every_yaml_file_parses(path: Path) -> None:
    assert load_yaml(path), f"{rel(path)} is empty"


@pytest.mark.parametrize("path", JSON_FILES, ids=rel)
def test_every_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_the_artefacts_are_all_there() -> None:
    """And the README, which the operator reads first, names each of them."""
    expected = {
        "Dockerfile",
        "compose.yaml",
        "prometheus/prometheus.yml",
        "prometheus/prometheus-k8s.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
        "grafana/dashboards/segue.json",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/segue.yml",
        "k8s/kustomization.yaml",
    }
    files = {
        str(p.relative_to(DEPLOY))
        for p in DEPLOY.rglob("*")
        if p.is_file() and p.name != "README.md"
    }
    assert expected <= files, sorted(expected - files)
    readme = (DEPLOY / "README.md").read_text()
    unnamed = sorted(f for f in files if f not in readme and Path(f).name not in readme)
    assert not unnamed, f"deploy/README.md does not mention {unnamed}"


# --- the Dockerfile --------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments may also sit between the lines of one instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(FROM image with global ARGs substituted, instructions) per stage, with its `AS` name."""
    args: dict[str, str] = {}
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for word, rest in dockerfile():
        if word == "ARG" and not result:
            name, _, value = rest.partition("=")
            args[name] = value
        elif word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)
            result.append((image, []))
        elif result:
            result[-1][1].append((word, rest))
    return result


def image_env() -> dict[str, str]:
    """The ENV of the final stage."""
    env: dict[str, str] = {}
    for word, rest in stages()[-1][1]:
        if word == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def final(word: str) -> list[str]:
    return [rest for w, rest in stages()[-1][1] if w == word]


def test_the_dockerfile_builds_in_one_stage_and_runs_in_another() -> None:
    (build_from, build), (run_from, run) = stages()
    assert build_from.endswith(" AS build")
    assert run_from.endswith(" AS runtime")
    # The venv's scripts name the build stage's interpreter by path: the same image must run it.
    assert build_from.split()[0] == run_from.split()[0]
    build_text = " ".join(rest for _, rest in build)
    run_text = " ".join(rest for _, rest in run)
    assert re.search(r"apt-get install .*\bg\+\+", build_text), "the build stage compiles Annoy"
    assert not re.search(r"\b(gcc|g\+\+|build-essential)\b", run_text), "no compiler at run time"
    assert any(w == "COPY" and rest.startswith("--from=build ") for w, rest in run)
    annoy = next(rest for w, rest in build if w == "ARG" and rest.startswith("ANNOY_COMPILER_ARGS"))
    assert "native" not in annoy, "a -march=native binary dies on an older CPU"


def image_uid() -> int:
    (user,) = final("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric USER lets Kubernetes verify runAsNonRoot"
    return int(uid)


def test_the_image_runs_as_a_user_with_a_healthcheck() -> None:
    assert image_uid() != 0
    (check,) = final("HEALTHCHECK")
    probe = json.loads(check[check.index("CMD") + 3 :])
    assert probe[0] == "python", "the slim image has no curl"
    code = probe[-1]
    assert "/healthz" in code
    assert "SEGUE_PORT" in code
    assert f"'{image_env()['SEGUE_PORT']}'" in code, "the default port is the image's SEGUE_PORT"


def test_the_image_exposes_its_api_and_metrics_ports() -> None:
    env = image_env()
    exposed = {int(p) for rest in final("EXPOSE") for p in rest.split()}
    assert exposed == {int(env["SEGUE_PORT"]), int(env["SEGUE_METRICS_PORT"])}


def image_entrypoint() -> list[str]:
    (entry,) = final("ENTRYPOINT")
    parsed: list[str] = json.loads(entry)
    assert parsed[-1] == "segue", "the image's commands are segue's"
    return parsed


def image_cmd() -> list[str]:
    (cmd,) = final("CMD")
    parsed: list[str] = json.loads(cmd)
    return parsed


def test_the_image_runs_segue_serve_by_default() -> None:
    image_entrypoint()
    assert image_cmd()[:3] == ["serve", "--host", "0.0.0.0"]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out of the build context: the last pattern that
    matches it or one of its parent folders decides (as BuildKit does)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            verdict = not negated
    return verdict


def test_the_build_context_holds_what_the_image_copies_and_no_secrets() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for word, rest in stages()[0][1]
        if word == "COPY"
        for src in rest.split()[:-1]
        if not src.startswith("--")
    ]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), src
        files = [src] if (ROOT / src).is_file() else [rel(p) for p in (ROOT / src).rglob("*.py")]
        assert not [f for f in files if ignored(f, patterns)], src
    for secret in (".env", ".venv/bin/python", ".git/config", "data/pg/postgresql.conf"):
        assert ignored(secret, patterns), secret
    assert ignored("gateway/__pycache__/x.pyc", patterns)


# --- compose ---------------------------------------------------------------------------------


def compose() -> Doc:
    doc: Doc = one_yaml(DEPLOY / "compose.yaml")
    return doc


def segue_services() -> dict[str, Doc]:
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if svc.get("image") == "segue:local"
    }


def gateway_services() -> dict[str, Doc]:
    return {n: s for n, s in segue_services().items() if s["command"][0] == "serve"}


def test_compose_runs_two_gateways_a_projector_and_a_migration() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    # One service builds the image (several building one tag race); none pulls it.
    assert [n for n, s in segue_services().items() if "build" in s] == ["migrate"]
    assert services["migrate"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / services["migrate"]["build"]["context"] / "pyproject.toml").exists()
    assert all(s["pull_policy"] == "never" for s in segue_services().values())
    assert len(gateway_services()) == 2
    projectors = [n for n, s in segue_services().items() if s["command"] == ["project"]]
    assert projectors == ["projector"]
    for name, svc in segue_services().items():
        if name == "migrate":
            continue
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    for svc in gateway_services().values():
        env = svc["environment"]
        assert env["SEGUE_RUN_PROJECTORS"] == "false"
        assert env["SEGUE_MIGRATE_ON_START"] == "false" or "--no-migrate" in svc["command"]


def test_compose_services_have_healthchecks() -> None:
    """A server has a health check (the gateways the image's); the one-shot migration and the
    projector, which serve no HTTP, turn the image's off rather than report unhealthy."""
    for name, svc in compose()["services"].items():
        check = svc.get("healthcheck")
        if name in {"migrate", "projector"}:
            assert check == {"disable": True}, name
        elif name in gateway_services():
            assert check is None, f"{name}: the image's HEALTHCHECK applies"
        else:
            assert check["test"][0] == "CMD", name


def test_compose_mounts_files_that_exist() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}"


def test_compose_ports_and_scrape_targets_agree() -> None:
    targets = {
        t
        for job in one_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
        for group in job["static_configs"]
        for t in group["targets"]
    }
    expected = set()
    for name, svc in gateway_services().items():
        env = svc["environment"]
        assert env["SEGUE_PORT"] != env["SEGUE_METRICS_PORT"]
        for mapping in svc["ports"]:
            assert mapping.split(":")[-1] == env["SEGUE_PORT"], name
        expected.add(f"{name}:{env['SEGUE_METRICS_PORT']}")
    assert targets == expected


def test_grafana_is_provisioned_with_the_compose_prometheus() -> None:
    (source,) = one_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    prometheus = compose()["services"]["prometheus"]
    published = {p.split(":")[-1] for p in prometheus["ports"]}
    assert source["url"] == f"http://prometheus:{published.pop()}"
    (provider,) = one_yaml(GRAFANA / "provisioning/dashboards/segue.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads((GRAFANA / "dashboards/segue.json").read_text())
    for panel in dashboard["panels"]:
        for ref in [panel.get("datasource"), *(t["datasource"] for t in panel.get("targets", []))]:
            if ref is not None:
                assert ref["uid"] == source["uid"], panel["title"]


# --- Kubernetes ------------------------------------------------------------------------------


def k8s_objects() -> list[Doc]:
    kustomization = one_yaml(K8S / "kustomization.yaml")
    return [doc for name in kustomization["resources"] for doc in load_yaml(K8S / name)]


def k8s(kind: str, name: str) -> Doc:
    (found,) = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_spec(obj: Doc) -> Doc:
    spec: Doc = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: Doc = spec["template"]["spec"]
    return pod


def pod_spec_labels(obj: Doc) -> dict[str, str]:
    """The labels of the pods a Deployment, Job or CronJob makes."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    labels: dict[str, str] = spec["template"]["metadata"]["labels"]
    return labels


def workloads() -> list[Doc]:
    return [o for o in k8s_objects() if o["kind"] in {"Deployment", "Job", "CronJob"}]


def containers(obj: Doc, *, init: bool = True) -> list[Doc]:
    spec = pod_spec(obj)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def config() -> dict[str, str]:
    data: dict[str, str] = k8s("ConfigMap", "segue-config")["data"]
    return data


def test_every_k8s_file_is_in_the_kustomization() -> None:
    listed = set(one_yaml(K8S / "kustomization.yaml")["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


EXPECTED_KINDS = {
    ("Namespace", "segue"): "v1",
    ("ConfigMap", "segue-config"): "v1",
    ("PersistentVolumeClaim", "segue-index"): "v1",
    ("Job", "segue-migrate"): "batch/v1",
    ("Deployment", "segue-gateway"): "apps/v1",
    ("Service", "segue-gateway"): "v1",
    ("Service", "segue-gateway-metrics"): "v1",
    ("HorizontalPodAutoscaler", "segue-gateway"): "autoscaling/v2",
    ("PodDisruptionBudget", "segue-gateway"): "policy/v1",
    ("Deployment", "segue-projector"): "apps/v1",
    ("CronJob", "segue-index-build"): "batch/v1",
}


def test_the_k8s_objects_have_the_expected_kinds_and_api_versions() -> None:
    found = {(o["kind"], o["metadata"]["name"]): o["apiVersion"] for o in k8s_objects()}
    assert found == EXPECTED_KINDS
    kustomization = one_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "segue"


def test_selectors_pick_the_gateway_pods_and_only_them() -> None:
    gateway = k8s("Deployment", "segue-gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    others = [pod_spec_labels(o) for o in workloads() if o["metadata"]["name"] != "segue-gateway"]

    def picks(selector: dict[str, str], pod: dict[str, str]) -> bool:
        return all(pod.get(k) == v for k, v in selector.items())

    selectors = [
        gateway["spec"]["selector"]["matchLabels"],
        k8s("PodDisruptionBudget", "segue-gateway")["spec"]["selector"]["matchLabels"],
        k8s("Service", "segue-gateway")["spec"]["selector"],
        k8s("Service", "segue-gateway-metrics")["spec"]["selector"],
    ]
    for selector in selectors:
        assert picks(selector, labels), selector
        assert not any(picks(selector, other) for other in others), selector
    projector = k8s("Deployment", "segue-projector")
    assert picks(projector["spec"]["selector"]["matchLabels"], pod_spec_labels(projector))


def test_the_autoscaler_and_the_disruption_budget_fit_the_gateway() -> None:
    gateway = k8s("Deployment", "segue-gateway")
    hpa = k8s("HorizontalPodAutoscaler", "segue-gateway")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": gateway["apiVersion"],
        "kind": "Deployment",
        "name": gateway["metadata"]["name"],
    }
    assert "replicas" not in gateway["spec"], "the autoscaler owns the count"
    assert hpa["minReplicas"] >= 2
    pdb = k8s("PodDisruptionBudget", "segue-gateway")["spec"]
    assert 1 <= pdb["minAvailable"] < hpa["minReplicas"], "a drain must be able to proceed"


def test_the_roles_run_where_they_should() -> None:
    (gateway,) = containers(k8s("Deployment", "segue-gateway"), init=False)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert gateway["args"][0] == "serve"
    assert env["SEGUE_RUN_PROJECTORS"] == "false"
    assert env["SEGUE_RUN_INDEX_BUILDER"] == "false"
    assert env["SEGUE_MIGRATE_ON_START"] == "false" or "--no-migrate" in gateway["args"]
    projector = k8s("Deployment", "segue-projector")
    assert projector["spec"]["replicas"] == 1
    assert [c["args"] for c in containers(projector)] == [["project"]]
    assert [c["args"] for c in containers(k8s("Job", "segue-migrate"))] == [["db", "upgrade"]]
    cron = k8s("CronJob", "segue-index-build")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert [c["args"] for c in containers(cron, init=False)] == [["index", "build"]]


def test_every_container_is_unprivileged_and_sized() -> None:
    uid = image_uid()
    for obj in workloads():
        spec = pod_spec(obj)
        name = obj["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == uid, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(obj):
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert ctx["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert ctx["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (name, c["name"])
            assert "memory" in c["resources"]["limits"], (name, c["name"])
            if c not in spec.get("initContainers", []):
                # A read-only root still needs a writable /tmp: Python's tempfile writes there.
                tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp, (name, c["name"])
                assert "emptyDir" in volumes[tmp[0]["name"]], (name, c["name"])


def test_the_database_url_comes_from_the_secret() -> None:
    for obj in workloads():
        for c in containers(obj, init=False):
            (url,) = [e for e in c["env"] if e["name"] == "SEGUE_DATABASE_URL"]
            assert url["valueFrom"]["secretKeyRef"] == {"name": "segue-database", "key": "url"}
            assert c["envFrom"] == [{"configMapRef": {"name": "segue-config"}}]
    assert "SEGUE_DATABASE_URL" not in config()
    readme = (DEPLOY / "README.md").read_text()
    assert "create secret generic segue-database --from-literal=url=" in readme


def test_k8s_ports_probes_and_scrape_config_agree() -> None:
    gateway = k8s("Deployment", "segue-gateway")
    (c,) = containers(gateway, init=False)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "http": int(config()["SEGUE_PORT"]),
        "metrics": int(config()["SEGUE_METRICS_PORT"]),
    }
    env = image_env()
    assert (env["SEGUE_PORT"], env["SEGUE_METRICS_PORT"]) == (
        config()["SEGUE_PORT"],
        config()["SEGUE_METRICS_PORT"],
    ), "the image's defaults and the cluster's settings name the same ports"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in ports, probe
    assert (c["startupProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]) == (
        "/healthz",
        "/healthz",
    )
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    for service in ("segue-gateway", "segue-gateway-metrics"):
        for port in k8s("Service", service)["spec"]["ports"]:
            assert port["targetPort"] in ports, (service, port)
    metrics = k8s("Service", "segue-gateway-metrics")["spec"]
    assert metrics["clusterIP"] == "None"
    assert metrics["publishNotReadyAddresses"] is True
    (job,) = one_yaml(PROMETHEUS / "prometheus-k8s.yml")["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["port"] == ports["metrics"]
    assert sd["names"] == ["segue-gateway-metrics.segue.svc.cluster.local"]


def test_the_index_volume_is_shared_and_its_mapped_copies_are_not() -> None:
    """Index builds publish to SEGUE_INDEX_DIR on a ReadWriteMany claim every gateway mounts;
    the per-host copies each process maps (SEGUE_INDEX_CACHE_DIR) are on each pod's own
    emptyDir, never on the shared claim."""
    claim = k8s("PersistentVolumeClaim", "segue-index")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    index_dir, cache_dir = config()["SEGUE_INDEX_DIR"], config()["SEGUE_INDEX_CACHE_DIR"]
    assert not Path(cache_dir).is_relative_to(index_dir)
    for obj in (k8s("Deployment", "segue-gateway"), k8s("CronJob", "segue-index-build")):
        spec = pod_spec(obj)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "initContainers" not in spec
        for c in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            claim_ref = volumes[mounts[index_dir]]["persistentVolumeClaim"]
            assert claim_ref["claimName"] == "segue-index"
            assert "emptyDir" in volumes[mounts[cache_dir]], "the copies stay on the pod's node"


# --- settings and commands -------------------------------------------------------------------

SEGUE_VARIABLE = re.compile(r"\bSEGUE_[A-Z0-9_]*[A-Z0-9]\b")


def deploy_texts() -> Iterator[tuple[Path, str]]:
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            yield path, path.read_text()
    yield ROOT / ".dockerignore", (ROOT / ".dockerignore").read_text()


def test_every_segue_variable_named_in_deploy_is_a_setting() -> None:
    known = {f"SEGUE_{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS
    unknown = sorted(
        f"{rel(path)}: {name}"
        for path, text in deploy_texts()
        for name in set(SEGUE_VARIABLE.findall(text))
        if name not in known
    )
    assert not unknown, unknown


def environments() -> Iterator[tuple[str, dict[str, str]]]:
    """Every set of SEGUE_* values a Segue process of deploy/ starts with."""
    image = {k: v for k, v in image_env().items() if k.startswith("SEGUE_")}
    yield "Dockerfile", image
    for name, svc in segue_services().items():
        env = {k: re.sub(r"\$\{[^}]*\}", "secret", str(v)) for k, v in svc["environment"].items()}
        yield f"compose {name}", {**image, **env}
    for obj in workloads():
        for c in containers(obj, init=False):
            literal = {e["name"]: e["value"] for e in c["env"] if "value" in e}
            secret = {"SEGUE_DATABASE_URL": "postgresql://segue:secret@db:5432/segue"}
            yield f"k8s {obj['metadata']['name']}", {**image, **config(), **literal, **secret}


def test_every_value_given_to_a_setting_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for where, env in environments():
        for name in [k for k in os.environ if k.upper().startswith("SEGUE_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        try:
            Settings(_env_file=None)
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}")


def segue_invocations() -> Iterator[tuple[str, list[str]]]:
    """(where, arguments after `segue`) of every segue command deploy/ runs or tells to run;
    `where` is "prose" for a command named in a sentence, which may leave out its arguments."""
    yield "Dockerfile CMD", image_cmd()
    for name, svc in segue_services().items():
        assert "entrypoint" not in svc, name
        yield f"compose {name}", svc["command"]
    for obj in workloads():
        for c in containers(obj):
            if c["image"] != "segue":
                continue
            if "command" in c:
                # A shell step: it must not start segue behind the test's back.
                assert not re.search(r"\bsegue [a-z]", c["command"][-1]), c["name"]
                continue
            yield f"k8s {obj['metadata']['name']}/{c['name']}", c["args"]
    readme = (DEPLOY / "README.md").read_text()
    for span in re.findall(r"`(segue [^`]+)`", readme):
        yield "prose", shlex.split(span)[1:]
    for block in re.findall(r"```[a-z]*\n(.*?)```", readme, re.DOTALL):
        for line in block.splitlines():
            match = re.search(r"(?:^|/|-- |exec [\w-]+ )segue ([^#\n]*)", line)
            if match:
                yield "deploy/README.md", shlex.split(match.group(1))


def parse(args: list[str], *, prose: bool = False) -> None:
    """Parse `segue ARGS` as click would, without running the command: an unknown command or
    option, a bad value or (unless `prose`) a missing one raises click.UsageError."""
    ctx = click.Context(main, info_name="segue")
    command: click.Command = main
    rest = list(args)
    while isinstance(command, click.Group):
        if not rest or rest[0].startswith("-"):
            raise click.UsageError(f"{command.name} needs a command, got {rest}")
        name = rest.pop(0)
        found = command.get_command(ctx, name)
        if found is None:
            raise click.UsageError(f"no command {name!r} in {ctx.command_path}")
        command = found
        ctx = click.Context(command, info_name=name, parent=ctx)
    # A path that must exist (`segue import FILE`) names the operator's file, not one here.
    must_exist = [
        p.type for p in command.params if isinstance(p.type, click.Path) and p.type.exists
    ]
    for path_type in must_exist:
        path_type.exists = False
    try:
        command.make_context(ctx.info_name, rest, parent=ctx.parent)
    except click.MissingParameter:
        if not prose:
            raise
    finally:
        for path_type in must_exist:
            path_type.exists = True


def test_the_command_parser_refuses_what_segue_refuses() -> None:
    parse(["serve", "--host", "0.0.0.0", "--no-migrate"])
    parse(["index", "build"])
    parse(["import", "no-such-file.parquet"])
    parse(["export"], prose=True)
    for bad in (
        ["serve", "--no-such"],
        ["index"],
        ["db", "uprade"],
        ["serve", "--workers", "0"],
        ["export"],
        ["import", "a", "b"],
    ):
        with pytest.raises(click.UsageError):
            parse(bad)


def test_every_segue_command_in_deploy_parses() -> None:
    seen = list(segue_invocations())
    assert len(seen) >= 10
    failures = []
    for where, args in seen:
        try:
            parse(args, prose=where == "prose")
        except click.UsageError as exc:
            failures.append(f"{where}: segue {' '.join(args)}: {exc.format_message()}")
    assert not failures, "\n".join(failures)


def route_paths() -> set[str]:
    return {ep.path for ep in ENDPOINTS if ep.method == "GET"}


def test_probed_and_scraped_paths_are_routes() -> None:
    paths = {
        probe["httpGet"]["path"]
        for obj in workloads()
        for c in containers(obj)
        for key in ("startupProbe", "livenessProbe", "readinessProbe")
        if (probe := c.get(key))
    }
    (check,) = final("HEALTHCHECK")
    paths |= set(re.findall(r"/[a-z]+z\b", check))
    for config_file in ("prometheus.yml", "prometheus-k8s.yml"):
        for job in one_yaml(PROMETHEUS / config_file)["scrape_configs"]:
            paths.add(job["metrics_path"])
    paths.add(
        k8s("Deployment", "segue-gateway")["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/path"
        ]
    )
    assert paths == {"/healthz", "/readyz", "/metrics"}
    assert paths <= route_paths()


# --- metrics ---------------------------------------------------------------------------------

METRIC = re.compile(r"\bsegue_[a-z0-9_]+")


def defined_metrics() -> set[str]:
    """The series names gateway/metrics.py exposes: a Counter `x` is `x_total`, an Info `x` is
    `x_info`, a Histogram `x` is `x_bucket`, `x_sum`, `x_count` (matched by stripping those)."""
    names: set[str] = set()
    tree = ast.parse((ROOT / "gateway/metrics.py").read_text())
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        kind, name = node.func.id, first.value
        if kind == "Counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "Info":
            names.add(f"{name}_info")
        elif kind in {"Gauge", "Histogram", "Summary", "Enum"}:
            names.add(name)
    return names


def used_metrics() -> dict[str, set[str]]:
    """Metric names read by the alerts, their tests and the dashboard, by file."""
    used: dict[str, set[str]] = {}
    for path in (PROMETHEUS / "alerts.yml", PROMETHEUS / "alerts_test.yml"):
        used[rel(path)] = set(METRIC.findall(path.read_text()))
    dashboard = json.loads((GRAFANA / "dashboards/segue.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used[rel(GRAFANA / "dashboards/segue.json")] = {m for e in exprs for m in METRIC.findall(e)}
    return used


def base_name(series: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", series)


def test_the_metric_reader_reads_gateway_metrics() -> None:
    defined = defined_metrics()
    assert {"segue_http_requests_total", "segue_http_request_seconds", "segue_index_degraded"} <= (
        defined
    )


def test_every_metric_in_the_alerts_and_the_dashboard_exists() -> None:
    known = defined_metrics()
    unknown = sorted(
        f"{where}: {name}"
        for where, names in used_metrics().items()
        for name in names
        if name not in known and base_name(name) not in known
    )
    assert not unknown, unknown


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    dashboard = json.loads((GRAFANA / "dashboards/segue.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    used = used_metrics()[rel(GRAFANA / "dashboards/segue.json")]
    for wanted in (
        "segue_http_requests_total",
        "segue_http_request_seconds_bucket",
        "segue_projection_lag_seconds",
        "segue_append_batch_events_bucket",
        "segue_append_commit_seconds_bucket",
        "segue_pool_connections",
        "segue_index_built_timestamp_seconds",
        "segue_index_recall",
        "segue_index_info",
        "segue_slates_total",
        "segue_outcomes_total",
    ):
        assert wanted in used, wanted
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert "histogram_quantile(0.5," in exprs
    assert "histogram_quantile(0.99," in exprs


# --- alerts ----------------------------------------------------------------------------------


def alert_rules() -> list[Doc]:
    return [
        rule
        for group in one_yaml(PROMETHEUS / "alerts.yml")["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_the_alerts_operators_asked_for_exist() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    for alert, metric in {
        "SegueProjectionLagging": "segue_projection_lag_seconds",
        "SegueProjectorFailed": "segue_projection_failed",
        "SegueServerErrors": 'status=~"5.."',
        "SegueUnavailable": 'status="503"',
        "SegueIndexDegraded": "segue_index_degraded",
        "SegueIndexStale": "segue_index_built_timestamp_seconds",
    }.items():
        assert metric in exprs[alert], alert
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [
        case
        for test in one_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} is never seen firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} is never seen quiet"


def test_the_alerts_read_the_scrape_job_both_configurations_define() -> None:
    jobs_in_alerts = set(re.findall(r'job="([^"]+)"', (PROMETHEUS / "alerts.yml").read_text()))
    for config_file in ("prometheus.yml", "prometheus-k8s.yml"):
        doc = one_yaml(PROMETHEUS / config_file)
        assert doc["rule_files"] == ["alerts.yml"]
        assert {job["job_name"] for job in doc["scrape_configs"]} == jobs_in_alerts
