//! The deployment artifacts under deploy/: what can be checked without docker, a cluster or
//! systemd. The files parse, the image and the pods run as non-root, the probes hit the admin
//! port, every example configuration passes `usage-gateway check`, and the pieces that must
//! agree with each other (ports, grace periods, the simulator's key) do.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_usage-gateway");

/// The metric names the gateway exports (histograms by their base name).
const EXPORTED_METRICS: &[&str] = &[
    "usage_gateway_requests_total",
    "usage_gateway_request_duration_seconds",
    "usage_gateway_upstream_requests_total",
    "usage_gateway_upstream_duration_seconds",
    "usage_gateway_cache_entries",
    "usage_gateway_cache_bytes",
    "usage_gateway_upstream_calls_saved_total",
    "usage_gateway_caller_requests_total",
    "usage_gateway_caller_upstream_calls_total",
    "usage_gateway_upstream_budget_remaining",
    "usage_gateway_breaker_open",
    "usage_gateway_errors_total",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under deploy/ whose name ends with one of `suffixes`, sorted.
fn files_ending_with(suffixes: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, suffixes: &[&str], found: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, suffixes, found);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if suffixes.iter().any(|suffix| name.ends_with(suffix)) {
                    found.push(path);
                }
            }
        }
    }
    let mut found = Vec::new();
    walk(&deploy_dir(), suffixes, &mut found);
    found.sort();
    found
}

fn yaml(relative: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{relative}: expected one YAML document");
    docs.remove(0)
}

/// `[table] key = <integer>` from a TOML file under deploy/, if it sets one.
fn toml_integer(relative: &str, table: &str, key: &str) -> Option<i64> {
    let document: toml::Table = read(relative)
        .parse()
        .unwrap_or_else(|e| panic!("{relative} is not TOML: {e}"));
    document.get(table)?.get(key)?.as_integer()
}

/// The Dockerfile's instructions: continuation lines joined, comments and blank lines dropped,
/// as (INSTRUCTION, arguments).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (instruction, arguments) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((pending.as_str(), ""));
        instructions.push((
            instruction.to_ascii_uppercase(),
            arguments.trim().to_owned(),
        ));
        pending.clear();
    }
    instructions
}

/// The instructions of the Dockerfile's last stage (from its last FROM on).
fn final_stage(instructions: &[(String, String)]) -> &[(String, String)] {
    let last_from = instructions
        .iter()
        .rposition(|(instruction, _)| instruction == "FROM")
        .expect("the Dockerfile has a FROM");
    &instructions[last_from..]
}

fn deployment_container() -> (Yaml, Yaml) {
    let deployment = yaml("kubernetes/deployment.yaml");
    assert_eq!(deployment["kind"].as_str(), Some("Deployment"));
    let pod = deployment["spec"]["template"]["spec"].clone();
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1, "one container: the gateway");
    let container = containers[0].clone();
    (pod, container)
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = files_ending_with(&[".yaml", ".yml"]);
    assert!(
        files.len() >= 9,
        "expected the compose, Prometheus, Grafana and Kubernetes YAML, found {files:?}"
    );
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let docs = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        assert!(
            docs.iter().any(|doc| doc.as_hash().is_some()),
            "{}: no YAML mapping in it",
            path.display()
        );
    }
}

#[test]
fn every_json_file_under_deploy_parses() {
    let files = files_ending_with(&[".json"]);
    assert!(!files.is_empty(), "expected the Grafana dashboard");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert!(value.is_object(), "{}: not a JSON object", path.display());
    }
}

#[test]
fn the_image_runs_as_a_non_root_user() {
    let instructions = dockerfile_instructions(&read("Dockerfile"));
    let user = final_stage(&instructions)
        .iter()
        .rev()
        .find(|(instruction, _)| instruction == "USER")
        .map(|(_, user)| user.clone())
        .expect("the final stage sets USER (the base image's default may be root)");
    let name = user.split(':').next().unwrap_or_default();
    match name.parse::<u32>() {
        Ok(uid) => assert_ne!(uid, 0, "USER {user} is root"),
        Err(_) => assert!(!name.is_empty() && name != "root", "USER {user} is root"),
    }
}

#[test]
fn the_image_is_built_locked_and_exposes_the_callers_and_admin_ports() {
    let instructions = dockerfile_instructions(&read("Dockerfile"));
    assert!(
        instructions
            .iter()
            .any(|(instruction, arguments)| instruction == "RUN"
                && arguments.contains("cargo build --release --locked --bins")),
        "the binaries are built with --locked from Cargo.lock"
    );
    let stage = final_stage(&instructions);
    let exposed: Vec<&str> = stage
        .iter()
        .filter(|(instruction, _)| instruction == "EXPOSE")
        .flat_map(|(_, ports)| ports.split_whitespace())
        .collect();
    assert!(
        exposed.contains(&"8080") && exposed.contains(&"9090"),
        "EXPOSE {exposed:?}"
    );
    let entrypoint = stage
        .iter()
        .rev()
        .find(|(instruction, _)| instruction == "ENTRYPOINT")
        .map(|(_, entrypoint)| entrypoint.as_str())
        .expect("ENTRYPOINT");
    assert!(
        entrypoint.contains("usage-gateway\""),
        "ENTRYPOINT {entrypoint}"
    );
}

#[test]
fn the_kubernetes_pods_run_non_root_with_a_read_only_root_and_no_privilege_escalation() {
    let (pod, container) = deployment_container();
    let security = &container["securityContext"];
    let pod_security = &pod["securityContext"];
    // A container setting wins over the pod's; either place counts.
    let setting = |key: &str| match &security[key] {
        Yaml::BadValue => pod_security[key].clone(),
        value => value.clone(),
    };
    assert_eq!(setting("runAsNonRoot").as_bool(), Some(true));
    let uid = setting("runAsUser").as_i64().expect("runAsUser");
    assert_ne!(uid, 0, "runAsUser must not be root");
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    let dropped = security["capabilities"]["drop"]
        .as_vec()
        .expect("capabilities.drop");
    assert!(
        dropped.iter().any(|c| c.as_str() == Some("ALL")),
        "{dropped:?}"
    );
    assert_eq!(
        setting("seccompProfile")["type"].as_str(),
        Some("RuntimeDefault")
    );
}

#[test]
fn the_kubernetes_probes_ask_the_admin_port_for_health_and_readiness() {
    let (_, container) = deployment_container();
    let admin_port = container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|port| port["containerPort"].as_i64() == Some(9090))
        .expect("containerPort 9090 (the admin listener)");
    let admin_name = admin_port["name"].as_str();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let on_admin = get["port"].as_i64() == Some(9090)
            || (get["port"].as_str().is_some() && get["port"].as_str() == admin_name);
        assert!(
            on_admin,
            "{probe} must use the admin port, not {:?}",
            get["port"]
        );
    }
}

#[test]
fn the_kubernetes_base_applies_every_manifest_but_not_the_secret_example() {
    let kustomization = yaml("kubernetes/kustomization.yaml");
    let resources: Vec<&str> = kustomization["resources"]
        .as_vec()
        .expect("resources")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for resource in &resources {
        let manifest = yaml(&format!("kubernetes/{resource}"));
        assert!(
            manifest["kind"].as_str().is_some(),
            "{resource} has no kind"
        );
    }
    let kinds: Vec<String> = resources
        .iter()
        .map(|r| {
            yaml(&format!("kubernetes/{r}"))["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for kind in ["Deployment", "Service", "PodDisruptionBudget"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} among {resources:?}"
        );
    }
    assert!(
        !resources.iter().any(|r| r.contains("secret")),
        "the Secret example must not be applied: {resources:?}"
    );
    let generated = &kustomization["configMapGenerator"][0]["files"][0];
    assert_eq!(generated.as_str(), Some("gateway.toml"));
    assert_eq!(
        yaml("kubernetes/secret.example.yaml")["kind"].as_str(),
        Some("Secret")
    );
}

#[test]
fn the_example_secrets_hold_only_obvious_placeholders() {
    let secret = yaml("kubernetes/secret.example.yaml");
    let values = secret["stringData"].as_hash().expect("stringData");
    for value in values.values() {
        let value = value.as_str().unwrap_or_default();
        assert!(
            value.contains("EXAMPLE"),
            "secret.example.yaml value {value:?} looks real"
        );
    }
    for path in files_ending_with(&[".example"]) {
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(text.contains("EXAMPLE"), "{} looks real", path.display());
    }
}

#[test]
fn the_example_configs_pass_usage_gateway_check() {
    let configs = files_ending_with(&[".toml"]);
    for expected in [
        "gateway.container.toml",
        "systemd/gateway.toml",
        "kubernetes/gateway.toml",
    ] {
        assert!(
            configs.contains(&deploy_dir().join(expected)),
            "deploy/{expected} missing: {configs:?}"
        );
    }
    // The token comes the way every deployment supplies it: a file, named here through the
    // environment override (the configs point at /run/secrets or get it from systemd).
    let dir = std::env::temp_dir().join(format!("usage-gateway-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let token_file = dir.join("onomondo-token");
    let token = "deploy-test-token-not-real";
    std::fs::write(&token_file, format!("{token}\n")).expect("write token");

    let mut failures = Vec::new();
    for config in &configs {
        let mut command = Command::new(BIN);
        // The developer's environment must not change what these files are checked as.
        for (name, _) in std::env::vars() {
            if name.starts_with("USAGE_GATEWAY") {
                command.env_remove(name);
            }
        }
        let output = command
            .args(["check", "--config"])
            .arg(config)
            .env("USAGE_GATEWAY__UPSTREAM__TOKEN_FILE", &token_file)
            // The Kubernetes base names its Redis through the environment (deployment.yaml).
            .env("REDIS_URL", "redis://127.0.0.1:6379")
            .output()
            .expect("runs usage-gateway check");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stdout.contains(token) && !stderr.contains(token),
            "check printed the token"
        );
        if !output.status.success() {
            failures.push(format!("{}:\n{stderr}{stdout}", config.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "usage-gateway check refused:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_dashboard_queries_only_metrics_the_gateway_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/usage-gateway.json")).expect("JSON");
    let mut exprs = Vec::new();
    fn collect(value: &serde_json::Value, exprs: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    exprs.push(expr.clone());
                }
                map.values().for_each(|v| collect(v, exprs));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, exprs)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "expected a dashboard full of queries, found {exprs:?}"
    );
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("usage_gateway_") {
            let name: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[start + name.len()..];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| base.ends_with("_seconds"))
                .unwrap_or(&name)
                .to_owned();
            assert!(
                EXPORTED_METRICS.contains(&base.as_str()),
                "{name} is not exported: {expr}"
            );
            used.insert(base);
        }
    }
    for needed in [
        "usage_gateway_requests_total",
        "usage_gateway_upstream_calls_saved_total",
        "usage_gateway_upstream_budget_remaining",
        "usage_gateway_breaker_open",
        "usage_gateway_request_duration_seconds",
        "usage_gateway_upstream_duration_seconds",
        "usage_gateway_errors_total",
        "usage_gateway_caller_requests_total",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn prometheus_scrapes_the_gateway_admin_port() {
    let prometheus = yaml("prometheus/prometheus.yml");
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let target = job["static_configs"][0]["targets"][0]
        .as_str()
        .expect("target");
    assert_eq!(target, "gateway:9090");
    let compose_config = read("compose/gateway.toml");
    assert!(
        compose_config.contains("listen = \"0.0.0.0:9090\""),
        "admin listen in compose"
    );
}

#[test]
fn the_compose_simulator_shares_the_gateway_loopback_and_accepts_its_token() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    for service in ["gateway", "sim", "prometheus", "grafana"] {
        assert!(
            services[service].as_hash().is_some(),
            "no {service} service"
        );
    }
    // usage-sim refuses non-loopback addresses, so it must live in the gateway's namespace.
    let sim = &services["sim"];
    assert_eq!(sim["network_mode"].as_str(), Some("service:gateway"));
    let command: Vec<&str> = sim["command"]
        .as_vec()
        .expect("command")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let listen = command
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1]);
    assert_eq!(listen, Some("127.0.0.1:8087"));
    assert!(read("compose/gateway.toml").contains("base_url = \"http://127.0.0.1:8087\""));
    let sim_keys = sim["environment"]["USAGE_SIM_KEYS"]
        .as_str()
        .expect("USAGE_SIM_KEYS");
    assert_eq!(sim_keys, read("secrets/onomondo-token.example").trim_end());
    let secret = &compose["secrets"]["onomondo-token"]["file"];
    assert_eq!(secret.as_str(), Some("./secrets/onomondo-token"));
    for image in ["prometheus", "grafana"] {
        let image = services[image]["image"].as_str().expect("image");
        let tag = image
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .unwrap_or_default();
        assert!(!tag.is_empty() && tag != "latest", "{image} must be pinned");
    }
}

#[test]
fn compose_and_kubernetes_run_three_replicas_on_one_redis_each_with_the_full_budget() {
    // Kubernetes: three replicas, a Redis in the base, [shared] naming it, 600 each.
    let deployment = yaml("kubernetes/deployment.yaml");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3));
    let resources = yaml("kubernetes/kustomization.yaml")["resources"].clone();
    let resources: Vec<&str> = resources
        .as_vec()
        .expect("resources")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        resources.contains(&"redis-deployment.yaml"),
        "{resources:?}"
    );
    assert!(resources.contains(&"redis-service.yaml"), "{resources:?}");
    let kubernetes: toml::Table = read("kubernetes/gateway.toml").parse().expect("TOML");
    assert_eq!(
        kubernetes["shared"]["redis_url_env"].as_str(),
        Some("REDIS_URL")
    );
    assert_eq!(
        toml_integer(
            "kubernetes/gateway.toml",
            "upstream",
            "rate_limit_per_minute"
        ),
        Some(600),
        "never divided by the replica count"
    );
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_vec()
        .expect("env")
        .clone();
    assert!(env
        .iter()
        .any(|var| var["name"].as_str() == Some("REDIS_URL")));

    // compose: three gateway services, one Redis, all on the first one's loopback.
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    for replica in ["gateway-2", "gateway-3", "redis", "sim"] {
        assert_eq!(
            services[replica]["network_mode"].as_str(),
            Some("service:gateway"),
            "{replica}"
        );
    }
    let compose_config: toml::Table = read("compose/gateway.toml").parse().expect("TOML");
    assert_eq!(
        compose_config["shared"]["redis_url"].as_str(),
        Some("redis://127.0.0.1:6379")
    );
    assert_eq!(
        toml_integer("compose/gateway.toml", "upstream", "rate_limit_per_minute"),
        None,
        "the default, 600"
    );
    let prometheus = read("prometheus/prometheus.yml");
    for admin in ["gateway:9090", "gateway:9092", "gateway:9093"] {
        assert!(prometheus.contains(admin), "Prometheus scrapes {admin}");
    }
}

#[test]
fn every_orchestrator_waits_longer_than_the_gateway_drains() {
    // Kubernetes: grace period beyond the preStop sleep plus the gateway's drain.
    let grace = |config: &str| toml_integer(config, "server", "shutdown_grace_secs").unwrap_or(30);
    let (pod, container) = deployment_container();
    let termination = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        termination > pre_stop + grace("kubernetes/gateway.toml"),
        "Kubernetes kills mid-drain"
    );

    // systemd: TimeoutStopSec beyond the drain.
    let unit = read("systemd/usage-gateway.service");
    let timeout = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .and_then(|value| value.trim().trim_end_matches('s').parse::<i64>().ok())
        .expect("TimeoutStopSec");
    assert!(
        timeout > grace("systemd/gateway.toml"),
        "systemd kills mid-drain"
    );

    // compose: stop_grace_period beyond the drain (docker's default 10s is not).
    let compose = yaml("compose.yaml");
    let period = compose["services"]["gateway"]["stop_grace_period"]
        .as_str()
        .and_then(|value| value.trim_end_matches('s').parse::<i64>().ok())
        .expect("stop_grace_period in seconds");
    assert!(
        period > grace("compose/gateway.toml"),
        "compose kills mid-drain"
    );
}

#[test]
fn the_systemd_unit_is_hardened_and_gets_the_token_as_a_credential() {
    let unit = read("systemd/usage-gateway.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LoadCredential=onomondo-token:/etc/usage-gateway/onomondo-token",
        // The gateway does not expand %d: systemd does, in Environment=.
        "Environment=USAGE_GATEWAY__UPSTREAM__TOKEN_FILE=%d/onomondo-token",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(has(line), "usage-gateway.service lacks `{line}`");
    }
    // The config leaves the token to the unit, so it cannot name a file the unit cannot read.
    let config = read("systemd/gateway.toml");
    let sets_token = config.lines().any(|line| {
        let name = line.split('=').next().unwrap_or_default().trim();
        ["token", "token_file", "token_env"].contains(&name)
    });
    assert!(
        !sets_token,
        "systemd/gateway.toml must not set the token itself"
    );
}
