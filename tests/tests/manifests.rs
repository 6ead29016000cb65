//! `deploy/kubernetes/` and `deploy/container/`, checked without a cluster
//! or a container runtime (the test machine has neither): every YAML
//! document parses (Debian's python3-yaml reads it, this test judges the
//! JSON it becomes), every file a kustomization names exists, and the
//! objects fit together as Kubernetes would need them to — selectors
//! match pod labels, the Service's target ports are named container
//! ports, every mounted volume is declared, the ConfigMaps and Secrets
//! referenced are the generated or documented ones, the coordinator keeps
//! its data on a volume claim, the pods run as non-root without
//! privileges. The Containerfile is checked for the stages the manifests
//! run. Whether a real API server accepts them is not tested here.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of a YAML file, as JSON.
fn yaml(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
        ])
        .arg(path)
        .output()
        .expect("python3 is missing: bash tests/mailstack/install.sh installs it");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'yaml'"),
        "python3-yaml is missing: bash tests/mailstack/install.sh installs it (apt-get install python3-yaml)"
    );
    assert!(out.status.success(), "{} does not parse as YAML: {err}", path.display());
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The objects of a kustomization, its own resources and its bases',
/// with the ConfigMap names its generators make.
fn kustomize(dir: &Path, objects: &mut Vec<Value>, generated: &mut BTreeSet<String>) {
    let k = yaml(&dir.join("kustomization.yaml")).remove(0);
    assert_eq!(k["kind"], "Kustomization", "{}", dir.display());
    for r in k["resources"].as_array().expect("resources") {
        let path = dir.join(r.as_str().unwrap());
        assert!(path.exists(), "{} names {} which does not exist", dir.display(), path.display());
        if path.is_dir() {
            kustomize(&path, objects, generated);
        } else {
            objects.extend(yaml(&path));
        }
    }
    for g in k["configMapGenerator"].as_array().into_iter().flatten() {
        generated.insert(g["name"].as_str().unwrap().to_string());
        for f in g["files"].as_array().unwrap() {
            let path = dir.join(f.as_str().unwrap());
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            text.parse::<toml::Table>()
                .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
        }
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// Checks one pod template; returns the Secret names it references.
fn pod(owner: &str, spec: &Value, generated: &BTreeSet<String>) -> BTreeSet<String> {
    let selector = &spec["selector"]["matchLabels"];
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in selector.as_object().expect("selector.matchLabels") {
        assert_eq!(&labels[k], v, "{owner}: selector {k}={v} does not match the pod's labels");
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{owner}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{owner}");
    let volumes: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["name"].as_str().unwrap())
        .chain(
            spec["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["metadata"]["name"].as_str().unwrap()),
        )
        .collect();
    let mut secrets = BTreeSet::new();
    for v in pod["volumes"].as_array().into_iter().flatten() {
        if let Some(cm) = v["configMap"]["name"].as_str() {
            assert!(generated.contains(cm), "{owner}: ConfigMap {cm} is not generated");
        }
        if let Some(s) = v["secret"]["secretName"].as_str() {
            secrets.insert(s.to_string());
        }
    }
    for c in pod["containers"].as_array().expect("containers") {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{owner}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{owner}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{owner}");
        for m in c["volumeMounts"].as_array().expect("volumeMounts") {
            let name = m["name"].as_str().unwrap();
            assert!(volumes.contains(name), "{owner}: mounts undeclared volume {name}");
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            if let Some(s) = e["secretRef"]["name"].as_str() {
                secrets.insert(s.to_string());
            }
        }
    }
    secrets
}

#[test]
fn the_kustomize_base_and_example_fit_together() {
    let mut objects = Vec::new();
    let mut generated = BTreeSet::new();
    kustomize(&deploy().join("kubernetes/overlays/example"), &mut objects, &mut generated);
    for o in &objects {
        assert!(
            o["apiVersion"].is_string() && o["kind"].is_string() && o["metadata"]["name"].is_string(),
            "not a Kubernetes object: {o}"
        );
    }

    let sts = of_kind(&objects, "StatefulSet");
    assert_eq!(sts.len(), 1, "one coordinator StatefulSet");
    let coord = sts[0];
    let claims = coord["spec"]["volumeClaimTemplates"].as_array().expect("a PVC template");
    assert_eq!(claims[0]["spec"]["accessModes"], serde_json::json!(["ReadWriteOnce"]));
    let secrets = pod("the coordinator", &coord["spec"], &generated);
    assert_eq!(secrets, BTreeSet::from(["mailloop-coordinator".to_string()]));

    let service = of_kind(&objects, "Service");
    assert_eq!(service.len(), 1);
    let svc = service[0];
    assert_eq!(svc["metadata"]["name"], coord["spec"]["serviceName"]);
    let pod_labels = &coord["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the Service selects the coordinator's pods");
    }
    let ports: BTreeSet<&str> = coord["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in svc["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(ports.contains(target), "Service port {target} is no container port");
    }

    let agents = of_kind(&objects, "Deployment");
    let regions: BTreeSet<&str> = agents
        .iter()
        .map(|d| d["spec"]["template"]["metadata"]["labels"]["mailloop.io/region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, BTreeSet::from(["eu-west", "us-east"]), "a Deployment per region");
    for d in &agents {
        let region = d["spec"]["template"]["metadata"]["labels"]["mailloop.io/region"].as_str().unwrap();
        let owner = format!("the {region} agents");
        assert_eq!(d["spec"]["replicas"], 1, "{owner}: one agent per token");
        let secrets = pod(&owner, &d["spec"], &generated);
        assert_eq!(secrets, BTreeSet::from([format!("mailloop-agent-{region}")]), "{owner}");
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        assert!(
            env.iter().any(|e| e["name"] == "MAILLOOP_AGENT__REGION" && e["value"] == region),
            "{owner}: the agent's region"
        );
    }
}

#[test]
fn the_containerfile_builds_static_scratch_images_for_both() {
    let text = std::fs::read_to_string(deploy().join("container/Containerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 3, "a build stage and two images: {froms:?}");
    assert!(froms[1..].iter().all(|f| f.starts_with("FROM scratch AS ")), "{froms:?}");
    for (stage, binary) in [("coordinator", "mailloop-coordinator"), ("agent", "mailloop-agent")] {
        let body = text.split(&format!("FROM scratch AS {stage}\n")).nth(1).expect(stage);
        let body = body.split("\nFROM ").next().unwrap();
        assert!(body.contains(&format!("ENTRYPOINT [\"/usr/bin/{binary}\", \"--log-format\", \"json\"]")), "{stage}");
        assert!(body.contains("USER 65532:65532"), "{stage} runs as non-root");
        assert!(body.contains("ca-certificates.crt"), "{stage} has the CA bundle");
    }
    assert!(text.contains("--target x86_64-unknown-linux-musl"), "static binaries for scratch");
}
