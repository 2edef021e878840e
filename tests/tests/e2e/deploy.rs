//! The deploy files, checked as far as this machine allows without a container engine or a
//! cluster: docker-compose.yml against the Compose Specification schema, every file it mounts,
//! `nginx -t` on the exact nginx configuration it mounts (in the file layout of the container),
//! the Kubernetes manifests against the Kubernetes 1.30 schemas, the systemd unit with
//! `systemd-analyze verify`, and the Dockerfile's structure. Beyond the schemas, each check
//! holds the files to the gateway's real settings (port, drain deadline, health endpoints).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e::{require_program, Gateway, RedisServer, TempDir};
use gateway::config::Settings;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a Python snippet with the packages tests/run.sh installs.
fn python(script: &str, args: &[&OsStr]) -> Output {
    let python = require_program("python3", "python3");
    let modules = Command::new(&python)
        .args(["-c", "import yaml, jsonschema, kubernetes_validate"])
        .output()
        .expect("running python3");
    assert!(
        modules.status.success(),
        "python3 lacks the test packages: `python3 -m pip install PyYAML jsonschema kubernetes-validate` (./tests/run.sh does it)\n{}",
        text(&modules.stderr)
    );
    Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("running python3")
}

/// Every YAML document of a file, as JSON.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let out = python(
        "import json, sys, yaml\n\
         print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        &[path.as_os_str()],
    );
    assert!(
        out.status.success(),
        "{} is not YAML: {}",
        path.display(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Schema errors of the YAML file `document` against the JSON schema `schema` (draft 2020-12).
fn schema_errors(schema: &Path, document: &Path) -> Vec<String> {
    let out = python(
        "import json, sys, yaml, jsonschema\n\
         schema = json.load(open(sys.argv[1]))\n\
         doc = yaml.safe_load(open(sys.argv[2]))\n\
         errors = jsonschema.Draft202012Validator(schema).iter_errors(doc)\n\
         print(json.dumps(['/'.join(map(str, e.absolute_path)) + ': ' + e.message for e in errors]))",
        &[schema.as_os_str(), document.as_os_str()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn compose() -> Value {
    yaml_documents(&repo().join("docker-compose.yml")).remove(0)
}

fn gateway_services(compose: &Value) -> Vec<(&String, &Value)> {
    let services = compose["services"].as_object().expect("services");
    let gateways: Vec<_> = services
        .iter()
        .filter(|(name, _)| name.starts_with("gateway-"))
        .collect();
    assert!(gateways.len() >= 3, "three replicas at least");
    gateways
}

/// A Compose duration such as "15s" or "1m30s", in milliseconds.
fn compose_duration_ms(value: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in value.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else {
            let n: u64 = number.parse().expect("a number before the unit");
            number.clear();
            total += n * match c {
                's' => 1000,
                'm' => 60_000,
                'h' => 3_600_000,
                other => panic!("unit {other} in {value}"),
            };
        }
    }
    assert!(number.is_empty(), "a unit after {value}");
    total
}

fn defaults() -> Settings {
    Settings::defaults()
}

#[test]
fn compose_file_validates_against_the_compose_specification() {
    let schema = repo().join("tests/schemas/compose-spec.json");
    let errors = schema_errors(&schema, &repo().join("docker-compose.yml"));
    assert!(errors.is_empty(), "docker-compose.yml: {errors:#?}");

    // The validator does catch mistakes: the same file with a wrong key and a wrong type.
    let broken = read("docker-compose.yml")
        .replacen(
            "    restart: unless-stopped\n",
            "    restart_policy: always\n",
            1,
        )
        .replacen("stop_grace_period: 15s", "stop_grace_period: [15]", 1);
    let dir = TempDir::new("compose");
    let copy = dir.0.join("docker-compose.yml");
    std::fs::write(&copy, broken).unwrap();
    let errors = schema_errors(&schema, &copy);
    assert!(
        errors.iter().any(|e| e.contains("restart_policy")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("stop_grace_period")),
        "{errors:#?}"
    );
}

#[test]
fn compose_mounts_exist_and_fit_the_gateway_and_nginx_settings() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let drain_ms = defaults().server.drain_timeout_ms;
    let port = defaults().server.bind.port();
    let example_env = env_file_values(&read("deploy/gateway.env.example"));

    // Every bind mount, build file and env file exists (or is the documented secret file).
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            let source = spec.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    repo().join(source).exists(),
                    "{name}: mounted file {source} does not exist"
                );
            }
        }
        if let Some(build) = service.get("build") {
            let context = repo().join(build["context"].as_str().unwrap());
            assert!(context
                .join(build["dockerfile"].as_str().unwrap())
                .is_file());
        }
        for env_file in service["env_file"].as_array().into_iter().flatten() {
            let path = env_file["path"].as_str().unwrap();
            // The secrets file is created by the operator from its example and never committed.
            assert!(
                repo().join(path).exists() || repo().join(format!("{path}.example")).is_file(),
                "{name}: env file {path} has no {path}.example"
            );
            assert!(
                read(".gitignore").lines().any(|l| l == path),
                "{path} holds secrets: git-ignore it"
            );
        }
        assert!(
            service["restart"].as_str().is_some(),
            "{name} has a restart policy"
        );
        assert_eq!(
            service["logging"]["driver"], "json-file",
            "{name}: log driver"
        );
        for option in ["max-size", "max-file"] {
            assert!(
                service["logging"]["options"][option].is_string(),
                "{name}: its log is rotated ({option})"
            );
        }
    }

    // Replicas: health check through the gateway's own flag, drain fits the grace period,
    // auth mode explicit, Redis is the compose service.
    let gateways = gateway_services(&compose);
    for (name, gateway) in &gateways {
        let test: Vec<&str> = gateway["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            test,
            ["CMD", "/usr/local/bin/gateway", "--healthcheck", "/readyz"],
            "{name}"
        );
        let grace = compose_duration_ms(gateway["stop_grace_period"].as_str().unwrap());
        assert!(
            grace > drain_ms,
            "{name}: stop_grace_period {grace} ms must exceed the drain deadline {drain_ms} ms"
        );
        let env = &gateway["environment"];
        assert!(
            env.get("GW__REDIS__URL").is_none(),
            "{name}: the Redis URL, password included, comes from the env file"
        );
        assert!(
            env["GW__AUTH__MODE"].is_string(),
            "{name}: auth mode set explicitly"
        );
        assert_eq!(gateway["expose"][0], port.to_string(), "{name}");
        // The internal port is open to the backend network, so the API keys are required
        // (the gateway refuses to start otherwise) and the env file provides them.
        let internal: std::net::SocketAddr = env["GW__SERVER__INTERNAL_BIND"]
            .as_str()
            .expect("GW__SERVER__INTERNAL_BIND")
            .parse()
            .unwrap();
        assert!(internal.ip().is_unspecified(), "{name}: {internal}");
        assert_eq!(gateway["expose"][1], internal.port().to_string(), "{name}");
        assert!(
            example_env
                .iter()
                .any(|(k, _)| k == "GW__PUBLISH__API_KEYS"),
            "deploy/gateway.env.example lists GW__PUBLISH__API_KEYS"
        );
        let address = gateway["networks"]["backend"]["ipv4_address"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: a fixed address, for nginx's resolution"));
        assert!(address.starts_with("172.28.0."), "{name}: {address}");
        assert_eq!(
            gateway["depends_on"]["redis"]["condition"], "service_healthy",
            "{name}"
        );
    }

    let addresses: BTreeSet<&str> = gateways
        .iter()
        .map(|(_, g)| g["networks"]["backend"]["ipv4_address"].as_str().unwrap())
        .chain([services["nginx"]["networks"]["backend"]["ipv4_address"]
            .as_str()
            .unwrap()])
        .collect();
    assert_eq!(
        addresses.len(),
        gateways.len() + 1,
        "distinct fixed addresses"
    );

    // Redis keeps what history needs across restarts, never evicts it, and wants the
    // gateway user's password (run for real in the_compose_redis_...).
    let redis = &services["redis"];
    let script = redis_script(&compose);
    for option in [
        "--appendonly yes",
        "--maxmemory-policy noeviction",
        "--maxmemory ",
        "user default off",
    ] {
        assert!(script.contains(option), "redis command lacks {option}");
    }
    assert!(redis["volumes"][0].as_str().unwrap().ends_with(":/data"));
    let url = &example_env
        .iter()
        .find(|(k, _)| k == "GW__REDIS__URL")
        .expect("GW__REDIS__URL in deploy/gateway.env.example")
        .1;
    assert!(
        url.starts_with("redis://gateway:") && url.ends_with("@redis:6379"),
        "{url}"
    );

    // nginx: mounts the shipped config, waits for every replica, lists every replica.
    let nginx = &services["nginx"];
    let mounts: Vec<&str> = nginx["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro"));
    let upstreams: BTreeSet<String> = read("deploy/nginx/nginx.conf")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server gateway-"))
        .map(|rest| format!("gateway-{}", rest.split_whitespace().next().unwrap()))
        .collect();
    let replicas: BTreeSet<String> = gateways
        .iter()
        .map(|(name, _)| format!("{name}:{port}"))
        .collect();
    assert_eq!(
        upstreams, replicas,
        "nginx upstreams are the compose replicas"
    );
    for (name, _) in &gateways {
        assert_eq!(
            nginx["depends_on"][name.as_str()]["condition"],
            "service_healthy"
        );
    }
    assert!(nginx["ports"]
        .as_array()
        .unwrap()
        .contains(&Value::from("443:443")));
    // The image runs /docker-entrypoint.d scripts only when they are executable.
    let script = mounts
        .iter()
        .find(|m| m.contains("/docker-entrypoint.d/"))
        .expect("the certificate script is mounted");
    let source = repo().join(script.split(':').next().unwrap());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(source).unwrap().permissions());
    assert!(mode & 0o111 != 0, "{script} must be executable");
}

/// `KEY=value` lines of an env file, comments and blank lines skipped.
fn env_file_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The shell script the compose `redis` service runs, with Compose's `$$` escapes undone.
fn redis_script(compose: &Value) -> String {
    let command = &compose["services"]["redis"]["command"];
    assert_eq!(command[0], "sh", "redis runs a script: {command}");
    command[2]
        .as_str()
        .expect("sh -c SCRIPT")
        .replace("$$", "$")
}

/// The compose `redis` service's script, run by a real redis-server on loopback (only the
/// port, directory and ACL file path changed): the default user is off, the `gateway` user
/// from GW__REDIS__URL is enough for a real gateway, and the example env file's placeholder
/// password is refused.
#[tokio::test]
async fn the_compose_redis_wants_the_gateway_user_and_serves_a_gateway_through_it() {
    let redis_server = require_program("redis-server", "redis-server");
    let script = redis_script(&compose());
    let dir = TempDir::new("compose-redis");
    let port = e2e::free_port();
    let local = script
        .replace(
            "/tmp/users.acl",
            &dir.0.join("users.acl").display().to_string(),
        )
        .replace(
            "exec docker-entrypoint.sh redis-server ",
            &format!(
                "exec {} --port {port} --bind 127.0.0.1 --dir {} ",
                redis_server.display(),
                dir.0.display()
            ),
        );
    assert!(local.contains(&format!("--port {port}")), "{local}");
    let run = |url: &str| {
        Command::new("sh")
            .args(["-c", &local])
            .env("GW__REDIS__URL", url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running the compose redis script")
    };

    // The unedited example is refused before Redis starts.
    let example = env_file_values(&read("deploy/gateway.env.example"));
    let example_url = &example
        .iter()
        .find(|(k, _)| k == "GW__REDIS__URL")
        .unwrap()
        .1;
    let out = run(example_url).wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("GW__REDIS__URL"),
        "{}",
        text(&out.stderr)
    );

    let password = "4e8b1d6f0a3c9e2b7d5f1a8c4e0b6d3f";
    let compose_url = format!("redis://gateway:{password}@redis:6379");
    let _redis = KillOnDrop(run(&compose_url));
    let url = format!("redis://gateway:{password}@127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    let mut anonymous = loop {
        match redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
        {
            Ok(connection) => break connection,
            Err(e) => assert!(std::time::Instant::now() < deadline, "redis never up: {e}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    };
    let refused = redis::cmd("GET")
        .arg("history:user_1")
        .query::<Option<String>>(&mut anonymous);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("NOAUTH")),
        "the default user is off: {refused:?}"
    );
    let mut gateway_user = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let admin = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query::<Vec<String>>(&mut gateway_user);
    assert!(
        admin.is_err(),
        "the gateway user has no admin commands: {admin:?}"
    );

    let gateway = Gateway::start(None, &[("GW__REDIS__URL", url.as_str())]);
    let mut client = e2e::WsClient::connect(&gateway.ws_url("8")).await;
    let (status, answer) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user": 8, "type": "info", "message": "through the compose ACL user"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{answer}\n{}", gateway.log());
    assert_eq!(
        client.next_json().await["message"],
        "through the compose ACL user"
    );
}

/// The value of `directive` inside the `location <prefix> {` block of the nginx config.
fn location_directive<'a>(conf: &'a str, location: &str, directive: &str) -> Vec<&'a str> {
    let start = conf
        .find(&format!("location {location} {{"))
        .unwrap_or_else(|| panic!("no location {location}"));
    let block = &conf[start..start + conf[start..].find("\n        }").unwrap()];
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix(directive)?.strip_prefix(' '))
        .map(|v| v.trim_end_matches(';'))
        .collect()
}

#[test]
fn the_nginx_config_proxies_websockets_as_the_gateway_needs() {
    let conf = read("deploy/nginx/nginx.conf");
    let ws = |directive| location_directive(&conf, "/ws/", directive);
    assert_eq!(ws("proxy_pass"), ["http://gateway"]);
    let headers = ws("proxy_set_header");
    assert!(headers.contains(&"Upgrade $http_upgrade"), "{headers:?}");
    assert!(
        headers.contains(&"Connection $connection_upgrade"),
        "{headers:?}"
    );
    assert_eq!(ws("proxy_buffering"), ["off"]);
    let timeout: u64 = ws("proxy_read_timeout")[0]
        .strip_suffix('s')
        .unwrap()
        .parse()
        .unwrap();
    let ping_ms = defaults().ws.ping_interval_ms;
    assert!(
        timeout * 1000 > ping_ms,
        "proxy_read_timeout {timeout}s must exceed ws.ping_interval_ms {ping_ms}"
    );
    // Server-level settings every location inherits.
    for line in [
        "proxy_http_version 1.1;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
    ] {
        assert!(conf.lines().any(|l| l.trim() == line), "{line}");
    }
    // No sticky sessions: any replica serves any user.
    for sticky in ["ip_hash", "hash ", "sticky"] {
        assert!(
            !conf.lines().any(|l| l.trim().starts_with(sticky)),
            "{sticky}"
        );
    }
}

#[test]
fn nginx_accepts_the_exact_config_compose_mounts() {
    // nginx -t resolves the upstream names and opens the certificates, so it runs in a
    // private mount namespace laid out like the container: the compose mounts at their
    // container paths, the first-start certificate script run as the image runs it, and the
    // compose service names in /etc/hosts. Nothing outside the namespace changes.
    let nginx = require_program("nginx", "nginx");
    require_program("openssl", "openssl");
    let unshare = require_program("unshare", "util-linux");
    let compose = compose();
    let mounts: Vec<(String, String)> = compose["services"]["nginx"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let mut parts = v.as_str().unwrap().split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            source
                .starts_with("./")
                .then(|| (repo().join(source).display().to_string(), target.to_owned()))
        })
        .collect();
    let config = &mounts
        .iter()
        .find(|(_, target)| target == "/etc/nginx/nginx.conf")
        .expect("compose mounts nginx.conf")
        .0;
    let cert_script = &mounts
        .iter()
        .find(|(_, target)| target.starts_with("/docker-entrypoint.d/"))
        .expect("compose mounts the certificate script")
        .0;
    // The replica names resolve to the fixed addresses compose gives them: what nginx holds
    // from its start stays right across a replica's recreation.
    let hosts: String = gateway_services(&compose)
        .iter()
        .map(|(name, service)| {
            let address = service["networks"]["backend"]["ipv4_address"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: a fixed address"));
            format!("{address} {name}\n")
        })
        .collect();
    let dir = TempDir::new("nginx-t");
    std::fs::write(dir.0.join("hosts"), format!("127.0.0.1 localhost\n{hosts}")).unwrap();
    let script = r#"set -eu
mount -t tmpfs tmpfs /etc/nginx
cp "$1" /etc/nginx/nginx.conf
sh "$2"
test -s /etc/nginx/certs/tls.crt
mount --bind "$3" /etc/hosts
exec "$4" -t -c /etc/nginx/nginx.conf
"#;
    let out = Command::new(unshare)
        .args(["--mount", "--fork", "sh", "-c", script, "nginx-t"])
        .arg(config)
        .arg(cert_script)
        .arg(dir.0.join("hosts"))
        .arg(&nginx)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "nginx -t on {config} in the container layout failed (this needs root for a mount \
         namespace, as tests/run.sh has in CI):\n{}\n{stderr}",
        text(&out.stdout)
    );
    assert!(stderr.contains("test is successful"), "{stderr}");
    assert!(
        text(&out.stdout).contains("created a self-signed certificate"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn kubernetes_manifests_validate_and_fit_the_gateway() {
    let path = repo().join("deploy/k8s/gateway.yaml");
    // Strict: a misspelt field is an error, not silently ignored. 1.30 is the oldest release
    // the manifest supports (the preStop sleep action).
    let out = python(
        "import sys, yaml, kubernetes_validate\n\
         for doc in yaml.safe_load_all(open(sys.argv[1])):\n\
         \x20   kubernetes_validate.validate(doc, '1.30', strict=True)\n\
         \x20   print(doc['kind'], 'ok')",
        &[path.as_os_str()],
    );
    assert!(
        out.status.success(),
        "Kubernetes 1.30 schema: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let documents = yaml_documents(&path);
    let find = |kind: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let (deployment, service, pdb, config) = (
        find("Deployment"),
        find("Service"),
        find("PodDisruptionBudget"),
        find("ConfigMap"),
    );
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    let selects_pods = |selector: &Value, what: &str| {
        let selector = selector.as_object().unwrap();
        assert!(!selector.is_empty(), "{what}: empty selector");
        for (key, value) in selector {
            assert_eq!(labels.get(key), Some(value), "{what} selects {key}={value}");
        }
    };
    selects_pods(&deployment["spec"]["selector"]["matchLabels"], "Deployment");
    selects_pods(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    selects_pods(&service["spec"]["selector"], "Service");
    assert!(
        pdb["spec"]["maxUnavailable"] == 1 || pdb["spec"]["minAvailable"].as_u64() >= Some(1),
        "the PDB keeps replicas serving"
    );

    let container = &pod["spec"]["containers"][0];
    let port_named = |name: &Value| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| &p["name"] == name || &p["containerPort"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    let setting = |key: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == key)
            .map(|e| e["value"].as_str().unwrap().to_owned())
            .or_else(|| config["data"][key].as_str().map(str::to_owned))
    };
    let port_of = |bind: String| -> u64 { bind.rsplit(':').next().unwrap().parse().unwrap() };
    let listening =
        port_of(setting("GW__SERVER__BIND").unwrap_or_else(|| defaults().server.bind.to_string()));
    let internal_bind = setting("GW__SERVER__INTERNAL_BIND").expect("GW__SERVER__INTERNAL_BIND");
    assert!(
        internal_bind.starts_with("0.0.0.0:"),
        "probes and Prometheus reach the internal port: {internal_bind}"
    );
    let internal = port_of(internal_bind);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            port_named(&get["port"]),
            internal,
            "{probe} hits the gateway's internal port"
        );
    }
    assert_eq!(
        port_named(&service["spec"]["ports"][0]["targetPort"]),
        listening,
        "the public Service: the public port only"
    );
    assert_eq!(service["spec"]["ports"].as_array().unwrap().len(), 1);
    let internal_service = documents
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] != service["metadata"]["name"])
        .expect("a Service for the internal port");
    selects_pods(&internal_service["spec"]["selector"], "internal Service");
    assert_eq!(
        port_named(&internal_service["spec"]["ports"][0]["targetPort"]),
        internal
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        internal.to_string(),
        "Prometheus scrapes the internal port"
    );

    // Secrets, the Redis URL with its password included, come from the Secret only.
    for key in [
        "GW__REDIS__URL",
        "GW__AUTH__HS256_SECRET",
        "GW__PUBLISH__API_KEYS",
    ] {
        assert!(config["data"].get(key).is_none(), "{key} in the ConfigMap");
        assert!(setting(key).is_none(), "{key} in the manifest");
    }
    let sources = container["envFrom"].as_array().unwrap();
    assert!(
        sources.iter().any(|s| s["secretRef"]["name"].is_string()),
        "envFrom a Secret"
    );
    assert!(
        read("deploy/k8s/gateway.yaml").contains("--from-literal=GW__REDIS__URL="),
        "the header says how to put the Redis URL in the Secret"
    );

    // Autoscaling keeps at least the replicas the PDB counts on.
    let hpa = find("HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(2));

    // NetworkPolicy: the public port from the ingress controller, the internal port from
    // backends and monitoring, nothing else.
    let policy = find("NetworkPolicy");
    selects_pods(
        &policy["spec"]["podSelector"]["matchLabels"],
        "NetworkPolicy",
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let mut ports_opened = BTreeSet::new();
    for rule in rules {
        assert!(
            !rule["from"].as_array().unwrap().is_empty(),
            "every rule names its peers: {rule}"
        );
        for port in rule["ports"].as_array().unwrap() {
            ports_opened.insert(port_named(&port["port"]));
        }
    }
    assert_eq!(ports_opened, BTreeSet::from([listening, internal]));

    let drain_ms: u64 = config["data"]["GW__SERVER__DRAIN_TIMEOUT_MS"]
        .as_str()
        .map_or(defaults().server.drain_timeout_ms, |v| v.parse().unwrap());
    let pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace_s = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace_s * 1000 > pre_stop_s * 1000 + drain_ms,
        "terminationGracePeriodSeconds {grace_s} must exceed preStop {pre_stop_s} s + drain {drain_ms} ms"
    );
    assert!(
        config["data"]["GW__AUTH__MODE"].is_string(),
        "auth mode set explicitly"
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["spec"]["securityContext"]["runAsUser"].to_string(),
        dockerfile_runtime_uid(),
        "the same non-root user as the image"
    );
}

/// The numeric user the runtime stage of deploy/Dockerfile runs as.
fn dockerfile_runtime_uid() -> String {
    let dockerfile = read("deploy/Dockerfile");
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    user.split(':').next().unwrap().to_owned()
}

#[test]
fn the_dockerfile_builds_a_small_non_root_image_with_a_health_check() {
    let dockerfile = read("deploy/Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: build, runtime: {stages:?}");
    assert!(stages[0].contains("-bookworm") && stages[0].ends_with(" AS build"));
    // The runtime's Debian release matches the build's (glibc).
    assert!(
        stages[1].contains("distroless/cc-debian12"),
        "{}",
        stages[1]
    );

    let uid: u32 = dockerfile_runtime_uid().parse().expect("numeric USER");
    assert_ne!(uid, 0, "non-root");
    assert!(dockerfile.contains("cargo build --release --locked -p gateway"));
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(repo().join(source).exists(), "{line}: {source} missing");
        }
    }
    let members: Vec<String> = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .unwrap()
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .collect();
    for member in &members {
        assert!(
            dockerfile.contains(&format!("COPY {member} {member}")),
            "workspace member {member} is copied into the build stage"
        );
    }
    let health = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .nth(1)
        .expect("HEALTHCHECK CMD line");
    assert!(
        health.contains(r#"CMD ["/usr/local/bin/gateway", "--healthcheck""#),
        "{health}"
    );
    assert!(dockerfile.contains(&format!("EXPOSE {}", defaults().server.bind.port())));
    let ignore = read("deploy/Dockerfile.dockerignore");
    assert!(
        ignore.lines().any(|l| l == "**/target"),
        "no target/ in the build context"
    );
    // The builder's Rust is at least the workspace's rust-version.
    let builder: f32 = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .unwrap()
        .parse()
        .unwrap();
    let required: f32 = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    assert!(
        builder >= required,
        "rust {builder} < rust-version {required}"
    );
}

#[test]
fn the_systemd_unit_verifies_and_drains_within_its_stop_timeout() {
    let analyze = require_program("systemd-analyze", "systemd");
    let unit_name = "notification-gateway@.service";
    let unit = read(&format!("deploy/systemd/{unit_name}"));

    // verify checks ExecStart exists, so it runs against a root holding the unit, the real
    // gateway binary at the unit's path, and this machine's own unit files for the targets.
    let root = TempDir::new("systemd-root");
    let units = root.0.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::write(units.join(unit_name), &unit).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let binary = root.0.join(exec.trim_start_matches('/'));
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::copy(e2e::gateway_binary(), &binary).unwrap();
    let system = root.0.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&system).unwrap();
    for entry in std::fs::read_dir("/usr/lib/systemd/system").expect("systemd's unit files") {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            let _ = std::fs::copy(entry.path(), system.join(entry.file_name()));
        }
    }
    let out = Command::new(analyze)
        .arg(format!("--root={}", root.0.display()))
        .args(["verify", "notification-gateway@8081.service"])
        .output()
        .unwrap();
    // verify only warns about unknown keys or bad values ("ignoring"): any line about our
    // unit is a failure.
    let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let ours: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("notification-gateway"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{output}"
    );

    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    let stop_s: u64 = value("TimeoutStopSec").parse().unwrap();
    assert!(stop_s * 1000 > defaults().server.drain_timeout_ms);
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert!(value("LimitNOFILE").parse::<usize>().unwrap() > defaults().server.max_connections);
    assert!(
        unit.contains("Environment=GW__AUTH__MODE="),
        "auth mode set explicitly"
    );

    // The DynamicUser reads its secret through a credential systemd copies for it.
    assert_eq!(value("DynamicUser"), "yes");
    let (credential, source) = value("LoadCredential").split_once(':').unwrap();
    assert!(source.starts_with("/etc/"), "{source}");
    assert_eq!(
        value("Environment=GW__AUTH__HS256_SECRET_FILE"),
        format!("%d/{credential}")
    );
    // Each instance's internal port differs from its public one and from other instances'.
    assert_eq!(value("Environment=GW__SERVER__BIND"), "127.0.0.1:%i");
    assert_eq!(
        value("Environment=GW__SERVER__INTERNAL_BIND"),
        "127.0.0.1:1%i"
    );
}

#[test]
fn the_healthcheck_flag_answers_for_the_configured_gateway() {
    let mut redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    // The health check asks the internal listener (where /healthz and /readyz answer).
    let check = |path: Option<&str>, bind: &str| {
        let mut command = Command::new(e2e::gateway_binary());
        command
            .env_clear()
            .env("GW__SERVER__INTERNAL_BIND", bind)
            // A non-loopback internal listener needs keys, or the configuration is refused.
            .env("GW__PUBLISH__API_KEYS", "9d4f1b7e3a0c8f6d2b5e9a1c7f3d0b8e")
            .arg("--healthcheck");
        command.args(path);
        command.output().unwrap()
    };
    let bind = gateway.internal.to_string();
    // The container form: bound to every address, checked on loopback.
    let any = format!("0.0.0.0:{}", gateway.internal.port());
    for (path, bind) in [(None, &bind), (Some("/readyz"), &bind), (None, &any)] {
        let out = check(path, bind);
        assert!(
            out.status.success(),
            "{path:?} {bind}: {}",
            text(&out.stderr)
        );
    }

    redis.kill();
    gateway.wait_for_readiness(503);
    let out = check(Some("/readyz"), &bind);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("503"), "{}", text(&out.stderr));
    assert!(check(None, &bind).status.success(), "still alive");

    let nobody = format!("127.0.0.1:{}", e2e::free_port());
    let out = check(None, &nobody);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
}

/// docker-compose.sentinel.yml: a valid Compose file; its sentinel configuration, run by a
/// real redis-server on loopback, watches a real master; and the gateway settings it layers
/// over docker-compose.yml make a real gateway follow that master.
#[tokio::test]
async fn the_sentinel_compose_override_runs_as_it_says() {
    let file = repo().join("docker-compose.sentinel.yml");
    let errors = schema_errors(&repo().join("tests/schemas/compose-spec.json"), &file);
    assert!(
        errors.is_empty(),
        "docker-compose.sentinel.yml: {errors:#?}"
    );
    let overlay = yaml_documents(&file).remove(0);
    let services = overlay["services"].as_object().unwrap();
    let sentinel_names: Vec<&String> = services
        .keys()
        .filter(|n| n.starts_with("sentinel-"))
        .collect();
    assert_eq!(sentinel_names.len(), 3, "a quorum of 2 needs 3 sentinels");
    let base = compose();
    let gateways = gateway_services(&base);

    // The sentinel's configuration, as its command writes it, pointed at a loopback master.
    let script = services[sentinel_names[0].as_str()]["command"][2]
        .as_str()
        .expect("sh -c script");
    let config = script
        .split("<<EOF\n")
        .nth(1)
        .and_then(|rest| rest.split("\nEOF").next())
        .expect("a heredoc with the configuration");
    let master_name = config
        .lines()
        .find_map(|l| l.strip_prefix("sentinel monitor "))
        .and_then(|l| l.split_whitespace().next())
        .expect("sentinel monitor <name> ...")
        .to_owned();
    let master = RedisServer::start();
    let sentinel_port = e2e::free_port();
    let dir = TempDir::new("compose-sentinel");
    let local = config
        .replace(
            "port 26379",
            &format!("port {sentinel_port}\nbind 127.0.0.1"),
        )
        .replace(" redis 6379 ", &format!(" 127.0.0.1 {} ", master.port));
    std::fs::write(dir.0.join("sentinel.conf"), local).unwrap();
    let _sentinel = KillOnDrop(
        Command::new(require_program("redis-server", "redis-server"))
            .arg(dir.0.join("sentinel.conf"))
            .arg("--sentinel")
            .current_dir(&dir.0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting the compose sentinel configuration"),
    );

    for (name, _) in &gateways {
        let env = &services[name.as_str()]["environment"];
        assert_eq!(
            env["GW__REDIS__URL"], "",
            "{name}: the overlay clears redis.url"
        );
        let listed: Vec<&str> = env["GW__REDIS__SENTINELS"]
            .as_str()
            .expect("GW__REDIS__SENTINELS")
            .split(',')
            .collect();
        let expected: Vec<String> = sentinel_names
            .iter()
            .map(|n| format!("{n}:26379"))
            .collect();
        assert_eq!(listed, expected, "{name}: every sentinel service");
        assert_eq!(
            env["GW__REDIS__SENTINEL_MASTER"],
            master_name.as_str(),
            "{name}"
        );
    }
    // The first gateway's overlay settings, with the loopback sentinel for the compose ones.
    let env = services[gateways[0].0.as_str()]["environment"]
        .as_object()
        .unwrap();
    let sentinels = format!("127.0.0.1:{sentinel_port}");
    let settings: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "GW__REDIS__SENTINELS" => (k.as_str(), sentinels.as_str()),
            _ => (k.as_str(), v.as_str().expect("string values")),
        })
        // No replica here to confirm writes; the gateway's readiness does not need one.
        .filter(|(k, _)| *k != "GW__REDIS__MIN_REPLICA_ACKS")
        .collect();
    let gateway = Gateway::start(None, &settings);
    let mut client = e2e::WsClient::connect(&gateway.ws_url("5")).await;
    assert_eq!(
        master.publish_raw("user_5", br#"{"type":"info","message":"via sentinel"}"#),
        1
    );
    assert_eq!(client.next_json().await["message"], "via sentinel");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
