"""
The Kubernetes manifests of C{deploy/kubernetes/}, validated offline with
C{kubernetes-validate}'s bundled schemas for one pinned Kubernetes version,
in strict mode (unknown fields are errors), with broken copies as controls;
and what a schema cannot see: the security context every pod must have,
Services that keep client addresses, selectors and ports that meet, and
variables the image's entry point knows.
"""

from __future__ import annotations

import copy
import glob
import os
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.support import containerScript

KUBERNETES_VERSION = "1.33.0"
"""The Kubernetes version the manifests are validated against."""

container = containerScript()

MANIFESTS = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "deploy", "kubernetes"
)

SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    # The part of the Prometheus Operator's ServiceMonitor the manifests
    # use (kubernetes-validate has schemas for Kubernetes' own kinds only).
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object"},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object"}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                        },
                    },
                },
            },
        },
    },
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """
    Every resource of every manifest file, with its file's name.
    """
    found = []
    for path in sorted(glob.glob(os.path.join(MANIFESTS, "*.yaml"))):
        with open(path) as f:
            for document in yaml.safe_load_all(f):
                if document:
                    found.append((os.path.basename(path), document))
    return found


def validate(resource: dict[str, Any]) -> None:
    """
    Validate one resource offline: Kubernetes' kinds with
    C{kubernetes-validate} (strict), the ServiceMonitor with
    L{SERVICE_MONITOR_SCHEMA}.

    @raise jsonschema.ValidationError: it is not valid.
    """
    if resource["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(resource, SERVICE_MONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def workloads() -> Iterator[dict[str, Any]]:
    """
    The Deployment and the DaemonSet.
    """
    for _, resource in manifests():
        if resource["kind"] in ("Deployment", "DaemonSet"):
            yield resource


def find(kind: str, name: str, namespace: str = "udptime") -> dict[str, Any]:
    for _, resource in manifests():
        metadata = resource["metadata"]
        if (resource["kind"], metadata["name"]) == (kind, name) and metadata.get(
            "namespace", namespace
        ) == namespace:
            return resource
    raise LookupError(f"no {kind} {name}")


class ValidationTests(SynchronousTestCase):
    def test_everyManifest(self) -> None:
        """
        Every resource of every file validates, and the set is complete.
        """
        resources = manifests()
        failures = []
        for filename, resource in resources:
            try:
                validate(resource)
            except Exception as error:  # collected: one report for all files
                failures.append(f"{filename}: {resource['kind']}: {error}")
        self.assertEqual(failures, [])
        kinds = sorted(r["kind"] for _, r in resources)
        self.assertEqual(
            kinds,
            sorted(
                ["Namespace"] * 2
                + ["Deployment", "DaemonSet", "PodDisruptionBudget"]
                + ["Service"] * 3
                + ["ServiceMonitor"]
            ),
        )
        files = {f for f, _ in resources}
        self.assertEqual(
            files,
            {os.path.basename(p) for p in glob.glob(os.path.join(MANIFESTS, "*"))},
            "a file in deploy/kubernetes/ that is not a YAML manifest",
        )

    def test_controls(self) -> None:
        """
        Broken copies are rejected: a misspelt field (strict mode), a value
        of the wrong type, a missing required field, and a ServiceMonitor
        whose port is a number.
        """
        deployment = find("Deployment", "udptime")
        misspelt = copy.deepcopy(deployment)
        context = misspelt["spec"]["template"]["spec"]["containers"][0]
        context["securityContext"]["readOnlyRootFileSystem"] = True
        wrongType = copy.deepcopy(deployment)
        wrongType["spec"]["replicas"] = "three"
        missing = copy.deepcopy(deployment)
        del missing["spec"]["selector"]
        monitor = copy.deepcopy(find("ServiceMonitor", "udptime"))
        monitor["spec"]["endpoints"][0]["port"] = 9123
        for broken, reason in (
            (misspelt, "'readOnlyRootFileSystem' was unexpected"),
            (wrongType, "'three' is not of type 'integer'"),
            (missing, "'selector' is a required property"),
            (monitor, "9123 is not of type 'string'"),
        ):
            error = self.assertRaises(jsonschema.ValidationError, validate, broken)
            self.assertIn(reason, error.message)
        validate(deployment)

    def test_pinnedVersionBundled(self) -> None:
        """
        The pinned version's schemas come with kubernetes-validate (no
        download): it validates against that version itself.
        """
        self.assertEqual(
            kubernetes_validate.validate(
                find("Namespace", "udptime"), KUBERNETES_VERSION, strict=True
            ),
            "1.33",
        )


class PodTests(SynchronousTestCase):
    """
    What every pod template must say.
    """

    def test_securityContext(self) -> None:
        for workload in workloads():
            pod = workload["spec"]["template"]["spec"]
            self.assertTrue(pod["securityContext"]["runAsNonRoot"])
            self.assertGreater(pod["securityContext"]["runAsUser"], 0)
            self.assertEqual(
                pod["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"}
            )
            self.assertIs(pod["enableServiceLinks"], False)
            self.assertIs(pod["automountServiceAccountToken"], False)
            for container_ in pod["containers"]:
                context = container_["securityContext"]
                self.assertIs(context["allowPrivilegeEscalation"], False)
                self.assertIs(context["readOnlyRootFilesystem"], True)
                self.assertEqual(context["capabilities"], {"drop": ["ALL"]})
                self.assertEqual(context["seccompProfile"], {"type": "RuntimeDefault"})
                limits = container_["resources"].get("limits", {})
                self.assertNotIn("cpu", limits, "throttling would delay replies")
                self.assertIn("memory", limits)

    def test_port123(self) -> None:
        """
        The Deployment lowers its own namespace's privileged ports to 123;
        the hostNetwork DaemonSet cannot (no net.* sysctl on the host's
        network), and sets none.
        """
        deployment = find("Deployment", "udptime")["spec"]["template"]["spec"]
        self.assertIn(
            {"name": "net.ipv4.ip_unprivileged_port_start", "value": "123"},
            deployment["securityContext"]["sysctls"],
        )
        daemonset = find("DaemonSet", "udptime", "udptime-host")["spec"]["template"]
        self.assertTrue(daemonset["spec"]["hostNetwork"])
        sysctls = daemonset["spec"]["securityContext"].get("sysctls", [])
        self.assertEqual([s for s in sysctls if s["name"].startswith("net.")], [])

    def test_probesAndMetrics(self) -> None:
        """
        Readiness and liveness ask /healthz on the metrics port, which is
        the port the container's variables, its ports and the scrape
        annotation name.
        """
        for workload in workloads():
            template = workload["spec"]["template"]
            (server,) = template["spec"]["containers"]
            ports = {p["name"]: p for p in server["ports"]}
            env = {e["name"]: e.get("value") for e in server["env"]}
            metricsPort = env["UDPTIME_METRICS_PORT"]
            self.assertEqual(str(ports["metrics"]["containerPort"]), metricsPort)
            self.assertEqual(
                template["metadata"]["annotations"]["prometheus.io/port"],
                env["UDPTIME_METRICS_PORT"],
            )
            for probe in ("readinessProbe", "livenessProbe"):
                self.assertEqual(
                    server[probe]["httpGet"], {"path": "/healthz", "port": "metrics"}
                )
            ntpPort = env["UDPTIME_NTP_PORT"]
            self.assertEqual(str(ports["ntp"]["containerPort"]), ntpPort)

    def test_environmentKnownToEntryPoint(self) -> None:
        """
        Every variable of the pods is one the image's entry point knows.
        """
        for workload in workloads():
            (server,) = workload["spec"]["template"]["spec"]["containers"]
            # A variable from a field reference: a value of the kind it gets.
            env = server["env"]
            environment = {e["name"]: e.get("value", "192.0.2.1") for e in env}
            arguments = container.argumentsFromEnvironment(environment)
            self.assertEqual(len(arguments), len(environment))

    def test_mountedKeyFileNotRotated(self) -> None:
        """
        A pod whose NTS key file is a mounted Secret (read-only, a copy per
        pod) never rotates it: rotation would fail to take the file's
        writer lock, and each pod would make keys of its own.
        """
        for workload in workloads():
            (server,) = workload["spec"]["template"]["spec"]["containers"]
            env = {e["name"]: e.get("value") for e in server["env"]}
            keyFile = env.get("UDPTIME_NTS_KEY_FILE")
            if keyFile is None:
                continue
            mounts = [
                m
                for m in server["volumeMounts"]
                if keyFile.startswith(m["mountPath"] + "/")
            ]
            self.assertEqual([m["readOnly"] for m in mounts], [True])
            self.assertEqual(env.get("UDPTIME_NTS_KEY_ROTATION"), "0")


class ServiceTests(SynchronousTestCase):
    def test_clientAddressesKept(self) -> None:
        """
        Every load-balanced Service keeps client source addresses.
        """
        for _, resource in manifests():
            if resource["kind"] == "Service" and resource["spec"].get("type") in (
                "LoadBalancer",
                "NodePort",
            ):
                self.assertEqual(resource["spec"]["externalTrafficPolicy"], "Local")

    def test_selectorsAndPorts(self) -> None:
        """
        Each Service, the PodDisruptionBudget and the ServiceMonitor select
        what exists, and each Service's target port is a container port of
        the same protocol.
        """
        deployment = find("Deployment", "udptime")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (server,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p for p in server["ports"]}
        services = [r for _, r in manifests() if r["kind"] == "Service"]
        self.assertEqual(len(services), 3)
        for service in services:
            self.assertLessEqual(service["spec"]["selector"].items(), labels.items())
            for port in service["spec"]["ports"]:
                target = ports[port["targetPort"]]
                self.assertEqual(target["protocol"], port["protocol"])
                self.assertEqual(target["containerPort"], port["port"])
        budget = find("PodDisruptionBudget", "udptime")
        self.assertEqual(budget["spec"]["selector"]["matchLabels"], labels)
        monitor = find("ServiceMonitor", "udptime")
        metrics = find("Service", "udptime-metrics")
        self.assertLessEqual(
            monitor["spec"]["selector"]["matchLabels"].items(),
            metrics["metadata"]["labels"].items(),
        )
        self.assertEqual(
            {e["port"] for e in monitor["spec"]["endpoints"]},
            {p["name"] for p in metrics["spec"]["ports"]},
        )
